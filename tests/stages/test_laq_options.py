"""LAQ's options on tiny procedural data: a frozen feature target (a real DINOv2 built small), action
supervision on a fixed fraction of the scenes (LAOM), augmentation of the training pairs, and the LAPA spec."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from hlrp_lab.data.pairs import FramePairs, is_labelled_scene, sample_pairs, to_float
from hlrp_lab.data.sources.procedural import generate_episode
from hlrp_lab.experiment.build import dry_build
from hlrp_lab.experiment.loop import evaluate_stage
from hlrp_lab.spec.check import check_spec, check_unresolved
from hlrp_lab.stages.laq import ActionHead, LAQStage
from tests.conftest import tiny_spec_dict
from tests.stages.conftest import fit_fixed_batch, same_batch
from tests.stages.test_laq import LAQ_METRICS, without_tasks

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
LAQ_SPECS = Path(__file__).parents[2] / "specs" / "laq.json"
TINY_DINO = {
    "name": "DINOv2Features",
    "config": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32},
}


def build(spec: dict, seed: int = 0) -> LAQStage:
    checked = check_spec(spec)
    LAQStage.prepare_data(checked)
    torch.manual_seed(seed)
    return LAQStage(checked, CPU, seed)


def feature_spec(shard_cache: Path) -> dict:
    spec = tiny_spec_dict(shard_cache)
    spec["model"]["decoder"]["target"] = TINY_DINO
    return spec


def test_a_feature_target_is_scored_against_the_features_of_frame_t(shard_cache, tmp_path):
    stage = build(feature_spec(shard_cache))
    assert not any(p.requires_grad for p in stage.target.parameters())
    assert not any(name.startswith("target") for name in stage.model.state_dict())  # never checkpointed
    metrics = evaluate_stage(stage, "fp32")
    assert without_tasks(metrics) == LAQ_METRICS
    val = to_float({key: stage.data.val[key] for key in ("frame_t", "frame_tk")}, CPU)
    with torch.no_grad():
        features_t, features_tk = stage.target(val["frame_t"]), stage.target(val["frame_tk"])
    copy_mse = (features_t - features_tk).pow(2).mean().item()
    assert metrics["copy_mse"] == pytest.approx(copy_mse, rel=1e-5)
    assert (
        metrics["val_mse"] == metrics["copy_mse"]
    )  # the untrained residual decoder copies frame t's features
    power = features_tk.pow(2).mean().item()  # the peak of a feature PSNR: its signal-to-noise ratio
    assert metrics["copy_psnr"] == pytest.approx(10 * math.log10(power / copy_mse), rel=1e-4)
    losses = fit_fixed_batch(stage, stage.train_batch(0), steps=15, lr=1e-3)
    assert losses[-1] < 0.7 * losses[0]
    trained = evaluate_stage(stage, "fp32")
    assert trained["copy_mse"] == metrics["copy_mse"] and trained["val_mse"] != metrics["val_mse"]
    names = {path.name for path in stage.draw(tmp_path, "x_")}  # no picture of decoded pixels
    assert names == {"x_code_examples.png", "x_code_usage.png"}


def test_a_pretrained_target_dry_builds_offline(shard_cache, monkeypatch, tmp_path):
    """`spec check --build` sizes a pretrained target from its `config`, without downloading it."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    spec = feature_spec(shard_cache)
    spec["model"]["decoder"]["target"] = {**TINY_DINO, "pretrained": "facebook/dinov2-small"}
    assert dry_build(check_spec(spec))["model"]["decoder"]["target"]["pretrained"] == "facebook/dinov2-small"


def test_without_supervision_the_loss_is_todays(shard_cache):
    """No `supervision` section, or fraction 0 with any weight: no head, no labels, and the loss of today's
    formula (reconstruction MSE of frame t+k + the quantizer's loss), step by step."""
    today = build(tiny_spec_dict(shard_cache))
    spec = tiny_spec_dict(shard_cache)
    spec["supervision"] = {"fraction": 0.0, "weight": 5.0}
    zero = build(spec)
    assert today.model.action_head is None and zero.model.action_head is None
    weights, zero_weights = today.model.state_dict(), zero.model.state_dict()
    assert weights.keys() == zero_weights.keys()
    assert all(torch.equal(weights[name], zero_weights[name]) for name in weights)
    today.model.train(), zero.model.train()
    for index in range(3):
        batch = today.train_batch(index)
        assert "labelled" not in batch and same_batch(batch, zero.train_batch(index))
        torch.manual_seed(index)  # the quantizer's dead-code restarts draw from the global generator
        loss, logs = today.train_step(batch)
        assert set(logs) == {"reconstruction_loss", "quantizer_loss"}
        torch.manual_seed(index)
        assert torch.equal(loss, zero.train_step(batch)[0])
    today.model.eval()  # today's formula, written out (eval: the quantizer's state does not move)
    batch = today.train_batch(0)
    with torch.no_grad():
        quantized = today.model.quantizer(today.model.encoder(batch["frame_t"], batch["frame_tk"]))
        expected = F.mse_loss(today.model.decoder(batch["frame_t"], quantized.quantized), batch["frame_tk"])
        assert torch.equal(today.train_step(batch)[0], expected + quantized.loss)


def test_labelled_scenes_are_a_fixed_hash_of_the_scene():
    names = [f"ep{i:06d}" for i in range(4000)]
    quarter = {name for name in names if is_labelled_scene(name, 0.25)}
    tenth = {name for name in names if is_labelled_scene(name, 0.1)}
    assert len(quarter) / len(names) == pytest.approx(0.25, abs=0.02)
    assert tenth < quarter  # raising the fraction keeps the scenes already labelled
    episodes = [dataclasses.replace(generate_episode(i, 16, 6, 1), scene=f"ep{i:06d}") for i in range(12)]
    pairs = FramePairs(episodes, [1, 2], label_fraction=0.5)
    labels = [bool(pairs.pair(i)["labelled"]) for i in range(len(pairs))]
    expected = [is_labelled_scene(episodes[e].scene, 0.5) for e, _, _ in pairs.index]
    assert labels == expected and 0 < sum(labels) < len(labels)
    rng = __import__("random").Random(0)
    for episode in episodes:  # the scene-level stream marks its pairs alike
        marks = {bool(p["labelled"]) for p in sample_pairs(episode, [1], 4, rng, label_fraction=0.5)}
        assert marks == {is_labelled_scene(episode.scene, 0.5)}
    assert "labelled" not in FramePairs(episodes, [1]).pair(0)


def test_only_labelled_pairs_reach_the_supervised_loss():
    torch.manual_seed(0)
    head = ActionHead(8, 16, 2)
    latent, action = torch.randn(6, 2, 4, requires_grad=True), torch.randn(6, 2)
    labelled = torch.tensor([True, False, True, False, False, True])
    loss = head.loss(latent, action, labelled)
    moved = action.clone()
    moved[~labelled] += 10.0
    assert torch.equal(head.loss(latent, moved, labelled), loss)
    moved[0] += 1.0
    assert head.loss(latent, moved, labelled) != loss
    loss.backward()
    assert latent.grad[~labelled].abs().sum() == 0 and latent.grad[labelled].abs().sum() > 0
    nothing = head.loss(latent, action, torch.zeros(6, dtype=torch.bool))
    assert nothing.item() == 0


def supervised_spec(shard_cache: Path, fraction: float) -> dict:
    """Pair level on 48 procedural scenes, a continuous latent (LAOM's), k = 4 (a visible move at 32 px)."""
    spec = tiny_spec_dict(shard_cache)
    spec["data"]["source"].update(episodes=48, episode_length=12)
    spec["data"].update(pairs="pair", offsets=[4], batch_size=16, val_pairs=64)
    spec["model"]["quantizer"] = {"name": "Identity", "dim": 8, "num_tokens": 2}
    spec["supervision"] = {"fraction": fraction, "weight": 10.0}
    return spec


def train(stage: LAQStage, steps: int) -> list[dict[str, float]]:
    """``steps`` Adam steps on the stage's own batches; the logged scalars of each."""
    stage.model.train()
    optimizer = torch.optim.Adam(stage.model.parameters(), lr=3e-3)
    logs = []
    for index in range(steps):
        loss, logged = stage.train_step(stage.train_batch(index))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        logs.append({key: value.item() for key, value in logged.items()})
    return logs


def test_a_little_supervision_trains_and_makes_the_latent_more_predictive_of_the_action(shard_cache):
    """Half the scenes labelled, 100 steps: the supervised loss falls and every probe of the held-out actions
    improves over the same run without supervision (measured, seeds 0-2: R² 0.84-0.86 vs 0.07-0.37, MSE
    0.73-0.83 vs 3.3-4.9, MLP probe 0.62-0.81 vs 2.8-4.9)."""
    plain = build(supervised_spec(shard_cache, 0.0), seed=1)
    supervised = build(supervised_spec(shard_cache, 0.5), seed=1)
    batch = supervised.train_batch(0)
    assert batch["labelled"].dtype == torch.bool and 0 < batch["labelled"].sum() < len(batch["labelled"])
    train(plain, 100)
    logs = train(supervised, 100)
    action_loss = [row["action_loss"] for row in logs]
    assert np.mean(action_loss[-10:]) < 0.3 * np.mean(action_loss[:10])
    without, with_ = evaluate_stage(plain, "fp32"), evaluate_stage(supervised, "fp32")
    assert with_["probe_r2"] > without["probe_r2"] + 0.2
    assert with_["probe_mse"] < 0.5 * without["probe_mse"]
    assert with_["probe_mlp_mse"] < 0.5 * without["probe_mlp_mse"]


def test_augmentation_changes_training_pairs_alone(shard_cache):
    plain = build(tiny_spec_dict(shard_cache))
    spec = tiny_spec_dict(shard_cache)
    spec["data"]["augment"] = {"crop_scale": [0.6, 0.9], "brightness": 0.3}
    augmented = build(spec)
    batch, plain_batch = augmented.train_batch(3), plain.train_batch(3)
    assert not torch.equal(batch["frame_t"], plain_batch["frame_t"])
    assert (
        torch.equal(batch["action"], plain_batch["action"])
        and batch["instruction"] == plain_batch["instruction"]
    )
    assert same_batch(augmented.train_batch(3), batch)  # still a function of the index
    assert same_batch(build(spec).train_batch(3), batch)  # and of the session seed
    for key in ("frame_t", "frame_tk"):
        assert np.array_equal(augmented.data.val[key], plain.data.val[key])
    assert evaluate_stage(augmented, "fp32") == evaluate_stage(
        plain, "fp32"
    )  # held-out and probe pairs as they were


def test_laq_lapa_is_lapas_laq_and_builds_on_the_meta_device():
    spec = dry_build(check_unresolved(json.loads(LAQ_SPECS.read_text())["laq_lapa"]))
    assert spec["data"]["image_size"] == 256 and spec["data"]["offsets"] == [30]
    with torch.device("meta"):
        model = LAQStage.build_model(spec)
    encoder = model.encoder
    assert encoder.factorized and encoder.patch_embed.kernel_size == (32, 32)
    assert encoder.position.shape == (1, 64, 1024)  # 8 x 8 patches of width 1024
    assert len(encoder.spatial.layers) == 8 and len(encoder.temporal.layers) == 8
    assert encoder.spatial.layers[0].self_attn.num_heads == 16  # heads of 64
    quantizer = model.quantizer
    assert type(quantizer).__name__ == "NSVQ" and quantizer.codebook_size == 8 and quantizer.num_tokens == 4
    assert quantizer.dim == 32 and len(model.decoder.transformer.layers) == 8
    assert not model.decoder.predict_residual and model.action_head is None
    assert (
        spec["train"]["grad_clip"] == 0.5 and spec["optim"]["name"] == "Adam" and spec["optim"]["lr"] == 1e-4
    )
