"""Action probes of a latent (LAPO, LAOM): ridge and MLP probes fit on training pairs and scored on held-out
ones, overall and per task."""

import pytest
import torch

from hlrp_lab.stages.metrics import MAX_PROBE_TASKS, action_probes, linear_probe_r2, task_slug

pytestmark = pytest.mark.usefixtures("one_thread")


def data(count: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents (count, 2, dim / 2) and 2-D actions that depend on them, one nonlinearly, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    latent = torch.randn(count, 2, dim // 2, generator=generator)
    flat = latent.flatten(1)
    action = torch.stack([2 * flat[:, 0].abs(), flat[:, 1] - flat[:, 2]], 1)
    return latent, action + 0.05 * torch.randn(count, 2, generator=generator)


def test_probes_measure_how_much_of_the_action_the_latent_holds():
    latent, action = data(1024, 16, 0)
    val_latent, val_action = data(256, 16, 1)
    tasks = ["push left", "push right"] * 128
    metrics = action_probes(latent, action, val_latent, val_action, tasks, seed=0)
    assert metrics["probe_r2"] == pytest.approx(linear_probe_r2(latent, action, val_latent, val_action))
    # the linear probe gets the linear half of the action; the MLP the absolute value too
    assert 0.3 < metrics["probe_r2"] < 0.9 and metrics["probe_mlp_mse"] < 0.5 * metrics["probe_mse"]
    assert action_probes(latent, action, val_latent, val_action, tasks, seed=0) == metrics  # deterministic
    assert action_probes(latent, action, val_latent, val_action, tasks, seed=1)[
        "probe_mlp_mse"
    ] != pytest.approx(metrics["probe_mlp_mse"], rel=1e-6)
    noise = torch.randn(1024, 2, 8, generator=torch.Generator().manual_seed(2))  # a latent that knows nothing
    unaware = action_probes(noise, action, noise[:256], val_action, tasks, seed=0)
    assert unaware["probe_r2"] < 0.05 and unaware["probe_mse"] > 2 * metrics["probe_mse"]


def test_per_task_probes_are_the_errors_of_each_task_for_a_bounded_number_of_tasks():
    latent, action = data(512, 8, 0)
    val_latent, val_action = data(60, 8, 1)
    names = [f"task {i}" for i in range(12)]
    tasks = [names[i % 12] if i < 48 else names[0] for i in range(60)]  # task 0 most frequent, then by name
    metrics = action_probes(latent, action, val_latent, val_action, tasks, seed=0)
    per_task = {key for key in metrics if key.startswith("probe_mse/")}
    assert len(per_task) == MAX_PROBE_TASKS
    assert "probe_mse/task-0" in per_task and "probe_mse/task-9" not in per_task  # "task 1", "task 10", ...
    counts = {name: tasks.count(name) for name in names}
    weighted = sum(
        metrics[f"probe_mse/{task_slug(n)}"] * counts[n]
        for n in names
        if f"probe_mse/{task_slug(n)}" in metrics
    )
    assert (
        weighted / sum(counts[n] for n in names if f"probe_mse/{task_slug(n)}" in metrics)
        != metrics["probe_mse"]
    )
    everything = action_probes(latent, action, val_latent, val_action, ["one task"] * 60, seed=0)
    assert everything["probe_mse/one-task"] == pytest.approx(everything["probe_mse"])
    assert task_slug("Push the RED block, left!") == "push-the-red-block-left"
