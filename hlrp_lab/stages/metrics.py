"""Evaluation metrics shared by stages: PSNR, codebook usage, linear probes."""

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
