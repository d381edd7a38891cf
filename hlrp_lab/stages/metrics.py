"""Evaluation metrics shared by stages: PSNR, codebook usage, linear probes, code confusion and ranks."""

import numpy as np
import torch


def per_image_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each image in the batch, predictions clamped to the valid [0, 1] range."""
    return (prediction.clamp(0, 1).float() - target.float()).pow(2).flatten(1).mean(1)


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of a set of images in [0, 1], from their per-image MSE.

    Computed from the mean MSE over the set, so identical frame pairs (MSE 0) do not dominate the average.
    """
    return 10 * torch.log10(1 / mse.mean().clamp_min(1e-10))


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
    x_train, y_train, x_test, y_test = (
        t.detach().cpu().double().flatten(1) for t in (x_train, y_train, x_test, y_test)
    )
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    design = torch.cat([(x_train - mean) / std, torch.ones(len(x_train), 1, dtype=torch.double)], 1)
    test_design = torch.cat([(x_test - mean) / std, torch.ones(len(x_test), 1, dtype=torch.double)], 1)
    gram = design.T @ design + ridge * len(design) * torch.eye(design.shape[1], dtype=torch.double)
    weights = torch.linalg.solve(gram, design.T @ y_train)
    residual = (y_test - test_design @ weights).pow(2).sum()
    total = (y_test - y_train.mean(0)).pow(2).sum()
    return (1 - residual / total).item()


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
