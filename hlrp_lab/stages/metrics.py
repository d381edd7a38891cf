"""Evaluation metrics shared by stages: PSNR, codebook usage, action probes, code confusion and ranks."""

import re
from collections import Counter

import numpy as np
import torch
from torch import nn

MAX_PROBE_TASKS = 8  # tasks with a metric of their own: the most frequent held-out ones
MLP_PROBE_STEPS, MLP_PROBE_HIDDEN, MLP_PROBE_LR, MLP_PROBE_DECAY = 300, 64, 1e-2, 0.1


def per_image_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each image in the batch, predictions clamped to the valid [0, 1] range."""
    return (prediction.clamp(0, 1).float() - target.float()).pow(2).flatten(1).mean(1)


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor, bounded: bool) -> torch.Tensor:
    """Mean squared error of each sample: of images (``bounded``: predictions clamped to [0, 1]) or of features."""
    if bounded:
        return per_image_mse(prediction, target)
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(1)


def psnr(mse: torch.Tensor, peak_power: float = 1.0) -> torch.Tensor:
    """PSNR in dB of a set of samples from their per-sample MSE: ``peak_power`` is 1 for images in [0, 1] (and
    the mean square of the targets for features, which makes it their signal-to-noise ratio).

    Computed from the mean MSE over the set, so identical frame pairs (MSE 0) do not dominate the average.
    """
    return 10 * torch.log10(peak_power / mse.mean().clamp_min(1e-10))


def codebook_usage(indices: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Perplexity of the code distribution and the fraction of codes used at least once."""
    counts = torch.bincount(indices.flatten(), minlength=codebook_size).double()
    probs = counts / counts.sum()
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
    return {"perplexity": entropy.exp().item(), "codes_used": (counts > 0).double().mean().item()}


def linear_probe_r2(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    ridge: float = 1e-3,
) -> float:
    """R² on the test set of a ridge regression from features x to targets y, fit on the train set."""
    predicted = linear_probe(x_train, y_train, x_test, ridge)
    return r2(predicted, y_test.detach().cpu().double().flatten(1), y_train.cpu().double().flatten(1).mean(0))


def linear_probe(
    x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, ridge: float = 1e-3
) -> torch.Tensor:
    """Predictions (float64, CPU) for ``x_test`` of a ridge regression from standardised x to y fit on the train
    set."""
    x_train, y_train, x_test = (t.detach().cpu().double().flatten(1) for t in (x_train, y_train, x_test))
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    design = torch.cat([(x_train - mean) / std, torch.ones(len(x_train), 1, dtype=torch.double)], 1)
    test_design = torch.cat([(x_test - mean) / std, torch.ones(len(x_test), 1, dtype=torch.double)], 1)
    gram = design.T @ design + ridge * len(design) * torch.eye(design.shape[1], dtype=torch.double)
    return test_design @ torch.linalg.solve(gram, design.T @ y_train)


def r2(predicted: torch.Tensor, y_test: torch.Tensor, train_mean: torch.Tensor) -> float:
    """1 - residual / total sum of squares, the total around the training targets' mean."""
    return (1 - (y_test - predicted).pow(2).sum() / (y_test - train_mean).pow(2).sum()).item()


def mlp_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, seed: int) -> torch.Tensor:
    """Predictions (float64, CPU) for ``x_test`` of a one-hidden-layer MLP fit to standardised x and y with
    ``MLP_PROBE_STEPS`` full-batch AdamW steps on the CPU: cheap (~0.3 s for 1024 pairs), and a function of
    ``seed`` and the data."""
    x_train, y_train, x_test = (t.detach().cpu().float().flatten(1) for t in (x_train, y_train, x_test))
    x_mean, x_std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    y_mean, y_std = y_train.mean(0), y_train.std(0).clamp_min(1e-6)
    inputs, targets = (x_train - x_mean) / x_std, (y_train - y_mean) / y_std
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(seed)
        net = nn.Sequential(
            nn.Linear(inputs.shape[1], MLP_PROBE_HIDDEN),
            nn.GELU(),
            nn.Linear(MLP_PROBE_HIDDEN, targets.shape[1]),
        )
        optimizer = torch.optim.AdamW(net.parameters(), lr=MLP_PROBE_LR, weight_decay=MLP_PROBE_DECAY)
        for _ in range(MLP_PROBE_STEPS):
            loss = (net(inputs) - targets).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return (net((x_test - x_mean) / x_std) * y_std + y_mean).double()


def task_slug(instruction: str) -> str:
    """A metric-name form of an instruction: "push the red block left" -> "push-the-red-block-left"."""
    return re.sub(r"[^a-z0-9]+", "-", instruction.lower()).strip("-") or "none"


def action_probes(
    train_latent: torch.Tensor,
    train_action: torch.Tensor,
    val_latent: torch.Tensor,
    val_action: torch.Tensor,
    tasks: list[str],
    seed: int,
) -> dict[str, float]:
    """How much of the true action the latent holds (LAPO, LAOM): probes fit on training pairs and scored on
    held-out ones. ``probe_r2`` and ``probe_mse`` of a ridge regression, ``probe_mlp_mse`` of an MLP, and
    ``probe_mse/<task>`` of the ridge regression on the held-out pairs of each of the ``MAX_PROBE_TASKS`` most
    frequent ``tasks`` (the pairs' instructions; ties by name)."""
    y_val, y_train = (t.detach().cpu().double().flatten(1) for t in (val_action, train_action))
    linear = linear_probe(train_latent, train_action, val_latent)
    errors = (linear - y_val).pow(2).mean(1)
    metrics = {
        "probe_r2": r2(linear, y_val, y_train.mean(0)),
        "probe_mse": errors.mean().item(),
    }
    mlp = mlp_probe(train_latent, train_action, val_latent, seed)
    metrics["probe_mlp_mse"] = (mlp - y_val).pow(2).mean().item()
    ranked = sorted(Counter(tasks).items(), key=lambda item: (-item[1], item[0]))[:MAX_PROBE_TASKS]
    names = np.array(tasks)
    for task, _ in ranked:
        metrics[f"probe_mse/{task_slug(task)}"] = errors[torch.from_numpy(names == task)].mean().item()
    return metrics


def code_counts(codes: np.ndarray, codebook_size: int) -> np.ndarray:
    """(K, C) how many pairs each token assigns to each code, from codes (N, K)."""
    return np.stack([np.bincount(column, minlength=codebook_size) for column in codes.T])


def true_code_ranks(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """(N, K) how many codes an argmax would pick before the true code (higher logits, and equal ones of a lower
    index): the true code is in the top k where < k, and rank 0 is the argmax's accuracy."""
    true = logits.gather(-1, codes.unsqueeze(-1))
    lower = torch.arange(logits.shape[-1], device=logits.device) < codes.unsqueeze(-1)
    return ((logits > true) | ((logits == true) & lower)).sum(-1)


def confusion_matrices(true: np.ndarray, predicted: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """(K, S, S) per token, over the codes ``codes`` (S,): the share of the pairs of each true code (row) that
    were predicted as each code (column). A row sums to 1 when every code is shown (less by the share predicted
    as codes not shown); a code that never occurs has a row of zeros."""
    index = np.full(max(true.max(), predicted.max(), codes.max()) + 1, -1)
    index[codes] = np.arange(len(codes))
    matrices = np.zeros((true.shape[1], len(codes), len(codes)))
    totals = np.zeros((true.shape[1], len(codes)))
    for j in range(true.shape[1]):
        rows, columns = index[true[:, j]], index[predicted[:, j]]
        np.add.at(matrices[j], (rows[(rows >= 0) & (columns >= 0)], columns[(rows >= 0) & (columns >= 0)]), 1)
        totals[j] = np.bincount(rows[rows >= 0], minlength=len(codes))
    return matrices / np.maximum(totals, 1)[..., None]
