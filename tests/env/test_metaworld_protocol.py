"""LeRobot's Meta-World protocol in the evaluator: the difficulty groups, pc_success per task, group and overall,
action chunks executed n_action_steps at a time (real simulator, 32 px), LeRobot's camera, and the torch-free
`eval-policy` command."""

import json
import multiprocessing
import subprocess
import sys

import numpy as np
import pytest

from hlrp_lab.env.metaworld_eval import Job, Observation, Result, evaluate_policy, metrics
from hlrp_lab.env.metaworld_sim import TaskSimulator
from hlrp_lab.env.metaworld_tasks import DIFFICULTY_GROUPS, LEROBOT_CAMERA, TASK_SETS, task_group

SETTINGS = {"image_size": 32, "camera": "corner4", "max_steps": 6, "seed": 3, "workers": 1}
LEROBOT_CORNER2_POS = (0.75, 0.075, 0.7)  # where LeRobot's Meta-World environment moves the corner2 camera


def test_the_difficulty_groups_are_lerobots_and_split_mt50():
    sizes = [len(TASK_SETS[group]) for group in DIFFICULTY_GROUPS]
    assert sizes == [28, 11, 6, 5]
    assert sorted(task for group in DIFFICULTY_GROUPS for task in TASK_SETS[group]) == TASK_SETS["mt50"]
    assert [task_group(t) for t in ("reach-v3", "basketball-v3", "push-v3", "shelf-place-v3")] == list(
        DIFFICULTY_GROUPS
    )


def test_pc_success_per_task_group_and_overall():
    """Two easy tasks (1/2 and 2/2 solved) and a medium one (0/2): groups average their episodes, the group
    mean averages the groups."""
    solved = {"reach-v3": [True, False], "drawer-open-v3": [True, True], "basketball-v3": [False, False]}
    results = [
        Result(Job(task, i, 0, False), 10, success)
        for task, outcomes in solved.items()
        for i, success in enumerate(outcomes)
    ]
    got = metrics(results, list(solved))
    assert got["pc_success"] == pytest.approx(50.0) and got["success_rate"] == pytest.approx(0.5)
    assert got["pc_success/reach-v3"] == 50.0 and got["success/reach-v3"] == 0.5
    assert got["pc_success/drawer-open-v3"] == 100.0 and got["pc_success/basketball-v3"] == 0.0
    assert got["pc_success/easy"] == 75.0 and got["pc_success/medium"] == 0.0
    assert "pc_success/hard" not in got and got["pc_success_group_mean"] == 37.5


class OpenLoop:
    """Plays one fixed action sequence in every episode: the chunk from the step each environment is at,
    advancing by the ``executed`` actions of a chunk; records the steps and states it is shown."""

    def __init__(self, chunk: int, executed: int):
        self.chunk, self.executed = chunk, executed
        self.actions = np.random.default_rng(0).uniform(-0.5, 0.5, (16, 4))
        self.step: dict[str, int] = {}
        self.seen: list[tuple[str, int, np.ndarray]] = []

    def __call__(self, obs: Observation) -> np.ndarray:
        chunks = []
        for task, state in zip(obs.tasks, obs.agent_states, strict=True):
            step = self.step.get(task, 0)
            self.seen.append((task, step, state.copy()))
            chunks.append(self.actions[step : step + self.chunk])
            self.step[task] = step + self.executed
        return np.stack(chunks)


def test_chunks_are_executed_n_action_steps_at_a_time_in_order():
    """Chunks of 4, 3 actions executed each: the policy sees steps 0 and 3 of a 6-step episode, in the states
    that executing the same actions one per step reaches."""
    stepwise, chunked = OpenLoop(chunk=1, executed=1), OpenLoop(chunk=4, executed=3)
    evaluate_policy(stepwise, ["drawer-open-v3"], 1, **SETTINGS)
    result = evaluate_policy(chunked, ["drawer-open-v3"], 1, **SETTINGS, action_steps=3)
    assert result["episode_length"] == 6 and result["success_rate"] == 0
    states = {step: state for _, step, state in stepwise.seen}
    assert sorted(states) == list(range(6))
    assert [step for _, step, _ in chunked.seen] == [0, 3]
    for _, step, state in chunked.seen:
        np.testing.assert_array_equal(state, states[step])
    assert not np.array_equal(states[0], states[3])  # the actions moved the hand


def lerobot_and_lab_frames(task: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """In a spawned process: the first frame of an episode from corner2 moved as LeRobot moves it, from the
    lab's LEROBOT_CAMERA, and from corner2 where Meta-World puts it."""
    frames = []
    for camera, position in (("corner2", LEROBOT_CORNER2_POS), (LEROBOT_CAMERA, None), ("corner2", None)):
        simulator = TaskSimulator(task, 32, camera)
        if position is not None:
            simulator.env.model.cam_pos[simulator.env.model.camera(camera).id] = position
        simulator.reset(seed)
        frames.append(simulator.render())
        simulator.close()
    return tuple(frames)


def test_lerobots_corner2_is_the_lab_lerobot_camera():
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # never render beside torch
        lerobot, lab, unmoved = pool.apply(lerobot_and_lab_frames, ("drawer-open-v3", 5))
    np.testing.assert_array_equal(lerobot, lab)
    assert np.abs(lerobot.astype(int) - unmoved).mean() > 10  # the move matters


def test_eval_policy_command_scores_a_bound_without_torch(tmp_path):
    out = tmp_path / "bounds.json"
    command = ["eval-policy", "random", "--tasks", "reach-v3", "--episodes", "2", "--size", "32"]
    command += ["--max-steps", "5", "--workers", "1", "--out", str(out)]
    code = (
        "import sys; from typer.testing import CliRunner; from hlrp_lab.cli.main import app; "
        f"result = CliRunner().invoke(app, {command!r}); print(result.output); "
        "bad = CliRunner().invoke(app, ['eval-policy', 'expert', '--tasks', 'reach']); "
        "print('exit', result.exit_code, bad.exit_code, bad.output.strip()); "
        "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = run.stdout.strip().splitlines()
    assert lines[-1] == "[]"  # neither torch nor ray imported
    assert lines[-2].startswith("exit 0 2 error: --tasks: unknown Meta-World tasks ['reach']")
    assert any(line.split() == ["reach-v3", "0.0"] for line in lines)
    assert any(line.split() == ["[easy]", "0.0"] for line in lines)
    saved = json.loads(out.read_text())
    assert (
        saved["policy"] == "random" and saved["tasks"] == ["reach-v3"] and saved["camera"] == LEROBOT_CAMERA
    )
    assert saved["metrics"]["pc_success"] == 0.0 and saved["metrics"]["episodes"] == 2
    assert saved["anchors"]["SmolVLA (0.45B)"] == 57.3
