"""The finetune stage with ``data.use_state`` on tiny real Meta-World demonstrations (32 px, 4 episodes of 10
steps) and a tiny SmolVLM: the proprio states reach the policy in training from the shards and in closed loop
from the simulator, the same way; ``rollout.n_action_steps`` executes chunks; the checks of both keys."""

import numpy as np
import pytest
import torch

from hlrp_lab.data.dataset import write_dataset
from hlrp_lab.data.pairs import to_float
from hlrp_lab.data.shards import read_episodes, shard_urls
from hlrp_lab.experiment.checkpoint import save_weights
from hlrp_lab.experiment.loop import evaluate_stage
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.weights import load_weights
from hlrp_lab.stages.finetune import FinetuneStage
from hlrp_lab.stages.vla import run_tokenizer
from tests.stages.conftest import BATCH, vla_spec

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
SEED, STEPS = 7, 4  # the data's seed is the rollouts' too: rollout episode 0 starts as data episode 0
SOURCE = {"name": "metaworld", "tasks": "reach-v3", "episodes": 4, "max_steps": 10, "after_success": None}


@pytest.fixture(scope="module")
def mw_shards(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mw") / "shards"
    block = {**SOURCE, "camera": "corner4", "seed": SEED}
    write_dataset(block, directory, image_size=32, name="mw", shard_size_mb=64, overwrite=False)
    return directory


@pytest.fixture(scope="module")
def spec(mw_shards, tmp_path_factory) -> dict:
    checked = vla_spec(
        "finetune",
        mw_shards,
        tmp_path_factory.mktemp("run"),
        data={"use_state": True, "action_chunk": 2, "val_split": 0.0},
        train={"eval_rollouts": 1},
        rollout={"max_steps": STEPS, "seed": SEED, "workers": 1, "videos": 0, "n_action_steps": 2},
    )
    FinetuneStage.prepare_data(checked)
    FinetuneStage.prepare(checked)
    return checked


@pytest.fixture(scope="module")
def stage(spec) -> FinetuneStage:
    torch.manual_seed(0)
    return FinetuneStage(spec, CPU, seed=0)


def test_training_batches_carry_the_shards_states_and_train_the_projection(stage, mw_shards):
    episodes = list(read_episodes(shard_urls(mw_shards)))
    known = {tuple(state) for e in episodes for state in e.states}
    batch = stage.train_batch(0)
    assert batch["state"].shape == (BATCH, 4) and batch["state"].dtype == torch.float32
    assert all(tuple(row) in known for row in batch["state"].numpy())
    states = np.concatenate([e.states for e in episodes])
    torch.testing.assert_close(stage.model.state_mean, torch.from_numpy(states.mean(0)))
    torch.testing.assert_close(stage.model.state_std, torch.from_numpy(states.std(0)))
    stage.model.train()
    loss, _ = stage.train_step(batch)
    loss.backward()
    assert stage.model.state_projection.weight.grad.abs().sum() > 0
    stage.model.zero_grad()
    stage.model.eval()


def test_predictions_depend_on_the_state_and_reload_from_the_weights(stage, spec, tmp_path):
    val = stage.data.val
    with torch.no_grad():
        predicted = stage.predict(val["frame_t"], val["instruction"], val["state"])
        moved = stage.predict(val["frame_t"], val["instruction"], val["state"] + 0.1)
    assert not torch.allclose(predicted, moved)
    path = tmp_path / "policy.safetensors"
    save_weights(stage.model, path, {})
    rebuilt = FinetuneStage.model_for_weights(spec, run_tokenizer(spec), path)
    load_weights(rebuilt, path, CPU)
    batch = to_float({"frame_t": val["frame_t"], "state": val["state"]}, CPU)
    with torch.no_grad():
        torch.testing.assert_close(
            rebuilt.eval()(batch["frame_t"], val["instruction"], batch["state"]), predicted
        )


def test_closed_loop_feeds_the_simulators_state_as_training_feeds_the_shards(stage, mw_shards, monkeypatch):
    """Rollout episode 0 starts where data episode 0 does: the policy is handed that frame and state, predicts
    what it predicts on the shard's, and is asked again after rollout.n_action_steps actions."""
    calls = []
    policy = stage.policy

    def recorder(frames: np.ndarray, instructions: list[str], states: np.ndarray) -> np.ndarray:
        chunks = policy(frames, instructions, states)
        calls.append((frames.copy(), states.copy(), chunks))
        return chunks

    monkeypatch.setattr(stage, "policy", recorder)  # the real policy, its calls recorded
    metrics = evaluate_stage(stage, "fp32")
    assert len(calls) == STEPS // 2 and [c[2].shape for c in calls] == [(1, 2, 4)] * 2
    first = next(read_episodes(shard_urls(mw_shards)))
    frames, states, chunks = calls[0]
    np.testing.assert_array_equal(frames[0], first.frames[0])
    np.testing.assert_array_equal(states[0], first.states[0])
    with torch.no_grad():
        offline = stage.predict(first.frames[:1].copy(), [first.instruction], first.states[:1].copy())
    np.testing.assert_allclose(chunks, offline.numpy(), rtol=1e-5, atol=1e-6)
    assert metrics["episodes"] == 1 and metrics["episode_length"] == STEPS
    assert metrics["pc_success"] == 100 * metrics["success_rate"] == metrics["pc_success/reach-v3"]
    assert metrics["pc_success/easy"] == metrics["pc_success_group_mean"] == metrics["pc_success"]


def test_use_state_needs_data_with_states(action_shards, tmp_path):
    spec = vla_spec("finetune", action_shards, tmp_path, data={"use_state": True})
    with pytest.raises(
        SpecError, match=r"^data\.use_state: .* has no proprio states; .* or set it to false$"
    ):
        FinetuneStage.prepare_data(spec)


def test_n_action_steps_cannot_exceed_the_chunk(mw_shards, tmp_path):
    spec = vla_spec("finetune", mw_shards, tmp_path, data={"action_chunk": 2}, rollout={"n_action_steps": 3})
    with pytest.raises(
        SpecError, match=r"^rollout\.n_action_steps: 3 .* data\.action_chunk predicts 2; lower rollout\."
    ):
        FinetuneStage.prepare_data(spec)
