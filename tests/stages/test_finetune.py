"""The finetune stage from scratch on tiny procedural demonstrations (2-D actions, chunks of 2) and a tiny
SmolVLM: batches, the step with each action head, learning a fixed batch, the action normalisation, the offline
action error against the mean-action baseline, data checks and the meta-device build."""

import math
import re
import shutil

import numpy as np
import pytest
import torch

from hlrp_lab.components.action_head import ACTION_HEADS
from hlrp_lab.data.pairs import is_val_scene
from hlrp_lab.data.shards import read_episodes, shard_urls
from hlrp_lab.experiment.build import dry_build
from hlrp_lab.experiment.loop import evaluate_stage
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.spec.check import check_spec
from hlrp_lab.stages.finetune import CHECK_ACTION_DIM, FinetuneStage
from tests.stages.conftest import BATCH, SIZE, fit_fixed_batch, grad_norm, same_batch, vla_spec

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
CHUNK, ACTION_DIM = 2, 2
FINETUNE_METRICS = {"val_action_mse", "val_action_l1", "mean_action_mse", "data/skipped_shards"}


@pytest.fixture(scope="module")
def spec(action_shards, tmp_path_factory) -> dict:
    """The checked spec, its data checked and its tokenizer made (once: the stage only reads them)."""
    checked = vla_spec(
        "finetune", action_shards, tmp_path_factory.mktemp("run"), data={"action_chunk": CHUNK}
    )
    FinetuneStage.prepare_data(checked)
    FinetuneStage.prepare(checked)
    return checked


def with_head(spec: dict, block: dict) -> dict:
    return check_spec({**spec, "model": {**spec["model"], "action_head": block}})


def build(spec: dict, seed: int = 0) -> FinetuneStage:
    torch.manual_seed(seed)
    return FinetuneStage(spec, CPU, seed=seed)


@pytest.fixture
def stage(spec) -> FinetuneStage:
    return build(spec)


def test_train_batch_is_a_function_of_its_index(stage, spec):
    batch = stage.train_batch(1)
    assert set(batch) == {"frame_t", "action_chunk", "instruction"}
    frames, actions = batch["frame_t"], batch["action_chunk"]
    assert frames.shape == (BATCH, 3, SIZE, SIZE) and frames.dtype == torch.float32
    assert frames.device == stage.device and 0 <= frames.min() and frames.max() <= 1
    assert actions.shape == (BATCH, CHUNK, ACTION_DIM) and actions.dtype == torch.float32
    assert actions.device == stage.device and actions.abs().max() <= 1  # the procedural actions' range
    assert len(batch["instruction"]) == BATCH and all(i.startswith("push the ") for i in batch["instruction"])
    assert same_batch(stage.train_batch(1), batch)
    assert same_batch(build(spec).train_batch(1), batch)
    assert not torch.equal(stage.train_batch(2)["frame_t"], frames)


@pytest.mark.parametrize("head", ACTION_HEADS.names())
def test_train_step_loss_is_finite_and_reaches_the_backbone_and_head(spec, head):
    stage = build(with_head(spec, {"name": head}))
    stage.model.train()
    loss, logs = stage.train_step(stage.train_batch(0))
    assert loss.shape == () and math.isfinite(loss.item()) and loss.item() > 0 and logs == {}
    loss.backward()
    assert grad_norm(stage.model.vla.backbone) > 0 and grad_norm(stage.model.action_head) > 0


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(stage):
    losses = fit_fixed_batch(stage, stage.train_batch(0), steps=20, lr=3e-3)
    assert all(map(math.isfinite, losses))
    assert losses[-1] < 0.8 * losses[0]  # about 0.6 x


def test_actions_are_scaled_by_the_percentiles_of_the_training_actions(stage, action_shards):
    episodes = read_episodes(shard_urls(action_shards))
    train = np.concatenate([e.actions for e in episodes if not is_val_scene(e.scene, 0.25)])
    low, high = np.percentile(train, [1, 99], axis=0)
    torch.testing.assert_close(stage.model.action_low, torch.from_numpy(low).float())
    torch.testing.assert_close(stage.model.action_high, torch.from_numpy(high).float())
    assert stage.model.action_low.shape == (ACTION_DIM,)
    val = stage.data.val
    with torch.no_grad():
        predicted = stage.predict(val["frame_t"], val["instruction"])
    assert predicted.shape == (len(val["frame_t"]), CHUNK, ACTION_DIM)
    assert (stage.model.action_low <= predicted).all() and (predicted <= stage.model.action_high).all()


def test_evaluate_reports_the_action_error_and_the_mean_action_baseline(stage):
    metrics = evaluate_stage(stage, "fp32")
    assert set(metrics) == FINETUNE_METRICS and FinetuneStage.Config.metric in metrics
    assert 0 <= metrics["val_action_mse"] <= 4 and 0 < metrics["mean_action_mse"] <= 4  # actions in [-1, 1]
    assert metrics["val_action_l1"] ** 2 <= metrics["val_action_mse"] + 1e-6 <= 4
    assert metrics["data/skipped_shards"] == 0


def test_a_policy_that_predicts_the_mean_training_action_scores_the_baseline(stage, monkeypatch):
    model = stage.model
    mean = model.denormalize(model.normalize(stage.train_actions).mean(0))
    monkeypatch.setattr(stage, "predict", lambda frames, _: mean.expand(len(frames), CHUNK, -1))
    metrics = evaluate_stage(stage, "fp32")
    assert metrics["val_action_mse"] == pytest.approx(metrics["mean_action_mse"], rel=1e-5)
    target = stage.data.val["action_chunk"]
    monkeypatch.setattr(stage, "predict", lambda frames, _: torch.from_numpy(target))
    perfect = evaluate_stage(stage, "fp32")
    assert perfect["val_action_mse"] == perfect["val_action_l1"] == 0
    assert perfect["mean_action_mse"] == metrics["mean_action_mse"]


def no_actions_message(shards) -> str:
    return f"data: {shards} has no actions to finetune on; use demonstrations with actions"


def test_prepare_data_refuses_shards_without_actions(frame_shards, tmp_path):
    spec = vla_spec("finetune", frame_shards, tmp_path)
    with pytest.raises(SpecError, match=f"^{re.escape(no_actions_message(frame_shards))}$"):
        FinetuneStage.prepare_data(spec)


def test_shards_without_a_manifest_or_actions_are_refused_when_the_stage_starts(frame_shards, tmp_path):
    """No manifest to read the keys from: the data check passes, and the stage finds no action to train on."""
    shutil.copy(shard_urls(frame_shards)[0], tmp_path / "bare-000000.tar")
    pattern = str(tmp_path / "bare-*.tar")
    spec = vla_spec("finetune", pattern, tmp_path / "run")
    FinetuneStage.prepare_data(spec)
    FinetuneStage.prepare(spec)
    with pytest.raises(SpecError, match=f"^{re.escape(no_actions_message(pattern))}$"):
        FinetuneStage(spec, CPU, seed=0)


def test_prepare_data_refuses_closed_loop_evaluation_outside_metaworld(action_shards, tmp_path):
    spec = vla_spec("finetune", action_shards, tmp_path, train={"eval_rollouts": 2})
    with pytest.raises(SpecError, match=r"^train\.eval_rollouts: closed-loop evaluation runs in Meta-World"):
        FinetuneStage.prepare_data(spec)


def test_prepare_data_refuses_an_init_from_that_is_no_run(action_shards, tmp_path):
    spec = vla_spec("finetune", action_shards, tmp_path, train={"init_from": str(tmp_path / "nothing")})
    with pytest.raises(SpecError, match=r"^train\.init_from: '.*nothing' is not a run directory"):
        FinetuneStage.prepare_data(spec)


@pytest.mark.parametrize("head", ACTION_HEADS.names())
def test_check_model_builds_on_the_meta_device(spec, head):
    checked = with_head(spec, {"name": head})
    assert dry_build(checked) is checked
    with torch.device("meta"):
        model = FinetuneStage.build_model(checked)
    assert all(p.is_meta for p in model.parameters())
    assert model.action_low.shape == (CHECK_ACTION_DIM,)  # the data sets the real number when a run starts
