"""Closed-loop evaluation in the push world: the same scenes as the procedural data, the expert and random
policies as its bounds, action chunks, videos."""

import av
import numpy as np
import pytest

from hlrp_lab.data.sources.procedural import generate_episode
from hlrp_lab.env.push_eval import (
    PUSH_DISTANCE,
    PushObservation,
    evaluate_push,
    random_policy,
    scripted_policy,
)
from hlrp_lab.env.push_world import episode_seed

SETTINGS = {"image_size": 32, "num_objects": 3, "max_steps": 23, "seed": 1000}


def test_the_expert_succeeds_where_random_actions_do_not_and_results_repeat():
    expert = evaluate_push(scripted_policy(0), 64, **SETTINGS, progress=False)
    rand = evaluate_push(random_policy(0), 64, **SETTINGS, progress=False)
    assert expert["success_rate"] >= 0.7 and rand["success_rate"] <= 0.1, (expert, rand)
    assert expert["episode_length"] < rand["episode_length"]  # an episode ends at its success
    assert expert["pc_success"] == pytest.approx(100 * expert["success_rate"])
    assert expert["episodes"] == 64
    per_task = {k: v for k, v in expert.items() if k.startswith("success/push-")}
    assert per_task and all(0 <= v <= 1 for v in per_task.values())
    assert evaluate_push(scripted_policy(0), 64, **SETTINGS, progress=False) == expert


def test_replaying_a_data_episode_reproduces_its_frames_and_instruction():
    """Episode i starts from the data source's scene of seed episode_seed(seed, i): the recorded actions,
    replayed closed loop, give the recorded frames."""
    data = generate_episode(episode_seed(SETTINGS["seed"], 0), 32, 24, 3)
    seen: list[PushObservation] = []

    def replay(obs: PushObservation) -> np.ndarray:
        seen.append(obs)
        return data.actions[len(seen) - 1][None]

    evaluate_push(replay, 1, **{**SETTINGS, "max_steps": 5}, progress=False)
    assert seen[0].instructions == [data.instruction]
    for step, obs in enumerate(seen):
        np.testing.assert_array_equal(obs.frames[0], data.frames[step])


def test_chunks_are_executed_before_the_next_prediction_and_videos_are_written(tmp_path):
    calls: list[int] = []

    def still(obs: PushObservation) -> np.ndarray:
        calls.append(len(obs.tasks))
        return np.zeros((len(obs.tasks), 4, 2))  # chunks of 4 actions that never push

    metrics = evaluate_push(
        still, 3, **{**SETTINGS, "max_steps": 10}, action_steps=3, videos=1, video_prefix=tmp_path / "ep"
    )
    assert calls == [3, 3, 3, 3]  # steps 0, 3, 6, 9
    assert metrics["success_rate"] == 0 and metrics["episode_length"] == 10
    (video,) = tmp_path.glob("ep_push-*_0.mp4")
    with av.open(str(video)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 11  # the first frame and one per step


def test_a_push_far_enough_the_asked_way_is_a_success():
    def push_by_hand(obs: PushObservation) -> np.ndarray:
        for task in obs.tasks:  # move the target block directly, as a perfect push would
            task.scene.blocks[task.target] += task.direction * PUSH_DISTANCE * task.scene.size
        return np.zeros((len(obs.tasks), 2))

    metrics = evaluate_push(push_by_hand, 4, **SETTINGS, progress=False)
    assert metrics["success_rate"] == 1 and metrics["episode_length"] < 3  # the agent may shove a block back


def test_bad_settings_and_policies_fail_with_their_reason():
    with pytest.raises(ValueError, match="episodes, max_steps"):
        evaluate_push(random_policy(0), 0, **SETTINGS)
    with pytest.raises(ValueError, match="need a video_prefix"):
        evaluate_push(random_policy(0), 1, **SETTINGS, videos=1)
    with pytest.raises(ValueError, match=r"\(2, 2\) actions"):
        evaluate_push(lambda obs: np.zeros((2, 4)), 2, **SETTINGS, progress=False)
