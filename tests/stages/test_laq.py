"""The LAQ stage on the tiny procedural spec (32 px, batch 8, scene-level stream): batches, the step, learning a
fixed batch, evaluation against the copy baseline, data checks and the meta-device build."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from hlrp_lab.components.encoder import ENCODERS
from hlrp_lab.components.quantizer import QUANTIZERS
from hlrp_lab.data.dataset import data_urls
from hlrp_lab.experiment.build import dry_build
from hlrp_lab.experiment.loop import evaluate_stage
from hlrp_lab.lib.errors import RunError, SpecError
from hlrp_lab.spec.check import check_spec
from hlrp_lab.stages.laq import LAQStage
from hlrp_lab.stages.metrics import MAX_PROBE_TASKS
from tests.conftest import tiny_spec_dict
from tests.stages.conftest import BATCH, SIZE, fit_fixed_batch, grad_norm, same_batch

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
LAQ_METRICS = {
    "val_mse",
    "val_psnr",
    "copy_mse",
    "copy_psnr",
    "psnr_gain",
    "latent_gain",
    "perplexity",
    "codes_used",
    "probe_r2",
    "probe_mse",
    "probe_mlp_mse",
    "data/skipped_shards",
}


def without_tasks(metrics: dict) -> set[str]:
    """The metric names but the per-task probes (``probe_mse/<task>``, a few per held-out set)."""
    tasks = {key for key in metrics if key.startswith("probe_mse/")}
    assert 0 < len(tasks) <= MAX_PROBE_TASKS
    return set(metrics) - tasks


def build(spec: dict, seed: int = 0) -> LAQStage:
    LAQStage.prepare_data(spec)
    torch.manual_seed(seed)
    return LAQStage(spec, CPU, seed=seed)


@pytest.fixture
def stage(tiny_spec) -> LAQStage:
    return build(tiny_spec)


def test_train_batch_is_a_function_of_its_index(stage, tiny_spec):
    third = stage.train_batch(3)
    assert set(third) == {"frame_t", "frame_tk", "action", "action_chunk", "instruction"}
    for key in ("frame_t", "frame_tk"):
        frames = third[key]
        assert frames.shape == (BATCH, 3, SIZE, SIZE) and frames.dtype == torch.float32
        assert frames.device == stage.device and 0 <= frames.min() and frames.max() <= 1
    assert third["action"].shape == (BATCH, 2) and third["action"].dtype == torch.float32
    assert len(third["instruction"]) == BATCH and all(i.startswith("push the ") for i in third["instruction"])
    assert not torch.equal(third["frame_t"], third["frame_tk"])  # the agent moves between the frames
    first = stage.train_batch(0)
    assert not torch.equal(first["frame_t"], third["frame_t"])
    assert same_batch(stage.train_batch(3), third)  # asked again, out of order: the stream is replayed
    assert same_batch(build(tiny_spec).train_batch(3), third)  # a new stage (a resumed run) serves the same
    assert not torch.equal(build(tiny_spec, seed=1).train_batch(3)["frame_t"], third["frame_t"])


def test_train_step_loss_is_finite_and_reaches_every_trained_component(stage):
    stage.model.train()
    loss, logs = stage.train_step(stage.train_batch(0))
    assert loss.shape == () and math.isfinite(loss.item()) and loss.item() > 0
    assert set(logs) == {"reconstruction_loss", "quantizer_loss"}
    assert not any(value.requires_grad for value in logs.values())
    assert loss.item() == pytest.approx((logs["reconstruction_loss"] + logs["quantizer_loss"]).item())
    loss.backward()
    assert grad_norm(stage.model.encoder) > 0 and grad_norm(stage.model.decoder) > 0


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(stage):
    losses = fit_fixed_batch(stage, stage.train_batch(0), steps=15, lr=1e-3)
    assert all(map(math.isfinite, losses))
    assert losses[-1] < 0.5 * losses[0]  # about 0.14 x


def test_untrained_model_scores_the_copy_baseline_and_training_moves_it(stage):
    """The residual decoder starts as the identity on frame t: the model scores exactly the copy baseline."""
    metrics = evaluate_stage(stage, "fp32")
    assert without_tasks(metrics) == LAQ_METRICS and LAQStage.Config.metric in metrics
    val = stage.data.val
    copy_mse = np.mean((val["frame_t"] / 255 - val["frame_tk"] / 255) ** 2)
    assert metrics["copy_psnr"] == pytest.approx(10 * np.log10(1 / copy_mse), rel=1e-4)
    assert metrics["val_psnr"] == metrics["copy_psnr"] and metrics["psnr_gain"] == 0
    assert metrics["latent_gain"] == 0  # a copy ignores the latent
    assert 1 <= metrics["perplexity"] <= 4 and 0 < metrics["codes_used"] <= 1  # codebook_size 4
    assert math.isfinite(metrics["probe_r2"]) and metrics["probe_r2"] <= 1
    assert metrics["data/skipped_shards"] == 0
    fit_fixed_batch(stage, stage.train_batch(0), steps=5, lr=1e-3)
    trained = evaluate_stage(stage, "fp32")
    assert trained["copy_psnr"] == metrics["copy_psnr"]  # the baseline does not depend on the model
    assert trained["val_psnr"] != metrics["val_psnr"]
    assert trained["psnr_gain"] == pytest.approx(trained["val_psnr"] - trained["copy_psnr"])
    assert 0 < trained["val_psnr"] < 100


def test_a_continuous_latent_reports_no_codebook_usage(shard_cache):
    spec = tiny_spec_dict(shard_cache)
    spec["model"]["quantizer"] = {"name": "Identity", "dim": 8, "num_tokens": 2}
    metrics = evaluate_stage(build(check_spec(spec)), "fp32")
    assert without_tasks(metrics) == LAQ_METRICS - {"perplexity", "codes_used"}


def test_prepare_data_returns_the_shards(tiny_spec):
    urls = LAQStage.prepare_data(tiny_spec)
    assert urls == data_urls(tiny_spec["data"]) and all(url.endswith(".tar") for url in urls)


def shards_spec(shard_cache, shards: str, **data) -> dict:
    spec = tiny_spec_dict(shard_cache)
    spec["data"].update(source=None, shards=shards, **data)
    return check_spec(spec)


def test_prepare_data_refuses_frames_of_another_size(tiny_spec, shard_cache):
    folder = str(Path(data_urls(tiny_spec["data"])[0]).parent)
    spec = shards_spec(shard_cache, folder, image_size=16)
    message = "data.image_size: 16, but the shards hold 32x32 frames; pass -s data.image_size=32"
    with pytest.raises(SpecError, match=re.escape(message)):
        LAQStage.prepare_data(spec)


def test_prepare_data_refuses_offsets_longer_than_every_scene(tiny_spec, shard_cache):
    folder = str(Path(data_urls(tiny_spec["data"])[0]).parent)
    spec = shards_spec(shard_cache, folder, offsets=[8])
    with pytest.raises(SpecError, match=r"^data\.offsets: \[8\], but no scene of .* has more than 8 frames"):
        LAQStage.prepare_data(spec)


def test_prepare_data_refuses_unreadable_shards(tmp_path, shard_cache):
    (tmp_path / "bad-000000.tar").write_bytes(b"not a tar file" * 20)
    pattern = str(tmp_path / "bad-*.tar")
    with pytest.raises(
        RunError, match=re.escape(f"data: no readable sample in {pattern} (1 shards, 1 corrupt)")
    ):
        LAQStage.prepare_data(shards_spec(shard_cache, pattern))


@pytest.mark.parametrize("quantizer", QUANTIZERS.names())
@pytest.mark.parametrize("encoder", ENCODERS.names())
def test_check_model_builds_on_the_meta_device(tiny_spec, encoder, quantizer):
    tiny_spec["model"]["encoder"] = {"name": encoder}
    tiny_spec["model"]["quantizer"] = {"name": quantizer}
    spec = check_spec(tiny_spec)
    assert dry_build(spec) is spec
    with torch.device("meta"):
        model = LAQStage.build_model(spec)
    assert all(p.is_meta for p in model.parameters())
    assert model.decoder.action_in.in_features == model.quantizer.dim


def test_check_model_names_a_size_mismatch(tiny_spec):
    tiny_spec["model"]["decoder"]["patch_size"] = 5
    with pytest.raises(SpecError, match="^model: .*patch_size 5 must divide image_size 32"):
        dry_build(check_spec(tiny_spec))


def test_metrics_do_not_depend_on_the_evaluation_chunk(stage):
    """Every rank evaluates in micro-batch chunks; the metrics must be those of one chunk of the global batch."""
    fit_fixed_batch(stage, stage.train_batch(0), steps=5, lr=1e-3)
    whole = evaluate_stage(stage, "fp32")
    stage.batch_size = 3  # uneven chunks, as a micro-batch of several ranks could make
    chunked = evaluate_stage(stage, "fp32")
    assert chunked.keys() == whole.keys()
    for key, value in whole.items():
        assert chunked[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert whole["latent_gain"] != 0  # the shuffled latents are those of other pairs
