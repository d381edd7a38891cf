"""Closed-loop evaluation in Meta-World, rendered for real (32x32, headless MuJoCo, spawned workers)."""

import multiprocessing
import os
import signal
from pathlib import Path

import av
import numpy as np
import pytest

from hlrp_lab.data.sources.config import MetaWorldConfig
from hlrp_lab.data.sources.metaworld import MetaWorldSource
from hlrp_lab.env.metaworld_eval import (
    Observation,
    evaluate_policy,
    expert_policy,
    random_policy,
)
from hlrp_lab.env.metaworld_tasks import TASK_DESCRIPTIONS
from hlrp_lab.lib.errors import RunError

TASKS = ["reach-v3", "drawer-open-v3"]
SETTINGS = {"image_size": 32, "camera": "corner2", "max_steps": 150, "seed": 1000, "workers": 2}


class Recorder:
    """A policy that keeps every observation it is given and acts as ``policy``."""

    def __init__(self, policy):
        self.policy, self.observations = policy, []

    def __call__(self, obs: Observation) -> np.ndarray:
        self.observations.append(obs)
        return self.policy(obs)


@pytest.fixture(scope="module")
def expert(tmp_path_factory) -> tuple[dict[str, float], Recorder, Path]:
    """The expert on TASKS, 2 episodes each, every episode recorded as a video."""
    video_dir = tmp_path_factory.mktemp("videos")
    recorder = Recorder(expert_policy())
    result = evaluate_policy(recorder, TASKS, 2, **SETTINGS, videos=4, video_prefix=video_dir / "x")
    return result, recorder, video_dir


def test_expert_succeeds(expert):
    result, _, _ = expert
    assert result["success_rate"] >= 0.75 and result["episodes"] == 4
    assert {f"success/{task}" for task in TASKS} <= set(result)
    assert 1 <= result["episode_length"] < SETTINGS["max_steps"]


def test_random_fails_and_is_deterministic():
    first, second = Recorder(random_policy(0)), Recorder(random_policy(0))
    result = evaluate_policy(first, TASKS, 2, **SETTINGS)
    assert result["success_rate"] <= 0.25 and result["episodes"] == 4
    assert evaluate_policy(second, TASKS, 2, **SETTINGS) == result
    assert len(first.observations) == len(second.observations)
    for a, b in zip(first.observations, second.observations, strict=True):
        assert a.tasks == b.tasks
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_array_equal(a.states, b.states)


def test_the_policy_sees_what_the_dataset_renders(expert):
    _, recorder, _ = expert
    first = recorder.observations[0]  # the first two jobs: reach-v3 episodes 0 and 1, at their reset
    assert first.tasks == ["reach-v3"] * 2 and first.instructions == [TASK_DESCRIPTIONS["reach-v3"]] * 2
    assert first.frames.shape == (2, 32, 32, 3) and first.frames.dtype == np.uint8
    assert first.states.shape == (2, 39) and first.states.dtype == np.float32
    config = MetaWorldConfig(tasks="reach-v3", episodes=2, max_steps=1, seed=SETTINGS["seed"])
    episodes = list(MetaWorldSource(config, image_size=32).episodes())
    np.testing.assert_array_equal(first.frames, np.stack([e.frames[0] for e in episodes]))
    np.testing.assert_array_equal(first.agent_states, np.stack([e.states[0] for e in episodes]))
    assert all(len(obs.tasks) <= 2 for obs in recorder.observations)  # never more than the workers


def test_videos_decode_to_every_frame(expert):
    result, recorder, video_dir = expert
    paths = sorted(video_dir.glob("*.mp4"))
    assert [p.name for p in paths] == [f"x_{task}_{i}.mp4" for task in sorted(TASKS) for i in range(2)]
    decoded = []
    for path in paths:
        with av.open(str(path)) as container:
            decoded.append([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    assert sum(map(len, decoded)) == result["episode_length"] * 4 + 4  # each step's frame and the first
    reach = decoded[paths.index(video_dir / "x_reach-v3_0.mp4")][0]
    assert reach.shape == (128, 128, 3)  # 32 px upscaled to 128
    expected = recorder.observations[0].frames[0].repeat(4, axis=0).repeat(4, axis=1)
    assert np.abs(reach.astype(int) - expected).mean() < 8  # the same picture, up to compression


def failing_policy(obs: Observation) -> np.ndarray:
    raise ValueError("policy exploded")


def test_a_failing_policy_leaves_no_workers():
    with pytest.raises(ValueError, match="policy exploded"):
        evaluate_policy(failing_policy, TASKS, 2, **SETTINGS)
    assert multiprocessing.active_children() == []


def test_a_worker_error_names_the_task_and_seed():
    with pytest.raises(RunError, match=r"(?s)drawer-open-v3 episode 0 \(seed \d+\).*no-such-camera"):
        evaluate_policy(random_policy(0), ["drawer-open-v3"], 1, **{**SETTINGS, "camera": "no-such-camera"})
    assert multiprocessing.active_children() == []


def test_a_dead_worker_names_its_episode():
    """A worker killed mid-episode (the second environment, on reach-v3 episode 1): one line, no workers left."""
    random = random_policy(0)
    calls = []

    def killer(obs: Observation) -> np.ndarray:
        calls.append(len(obs.tasks))
        if len(calls) == 3:
            (worker,) = [p for p in multiprocessing.active_children() if p.name.endswith("-1")]
            os.kill(worker.pid, signal.SIGKILL)
        return random(obs)

    with pytest.raises(
        RunError, match=r"^metaworld eval: reach-v3 episode 1 \(seed \d+\): the worker died"
    ) as err:
        evaluate_policy(killer, TASKS, 2, **SETTINGS)
    assert "\n" not in str(err.value) and "exit code -9" in str(err.value)
    assert multiprocessing.active_children() == []
