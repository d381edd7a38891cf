"""Closed-loop evaluation in the push world (``hlrp_lab.env.push_world``): success of a policy over seeded
episodes of the procedural tasks.

Episode ``i`` starts from ``episode_seed(seed, i)``, drawn as the data source draws its episodes (so a policy
sees the scenes, instructions and frames it was trained on, from seeds the training data did not use). An
episode succeeds once the target block has moved ``PUSH_DISTANCE`` of the image side the way its instruction
asks, and ends then or after ``max_steps`` steps. The scenes are numpy, so every episode steps in this
process, all at once: the policy sees one batch per step, of the episodes that need a new plan, and may return
action chunks of which each episode executes the first ``action_steps``. Metrics as Meta-World's evaluator
names them: ``success_rate``, ``pc_success``, per task (``success/push-red-left``, ...), and the mean episode
length.
"""

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hlrp_lab.env.policy_output import checked_actions, success_metrics, write_video
from hlrp_lab.env.push_world import ACTION_SIZE, PushTask, episode_seed, new_task, scripted_action

PUSH_DISTANCE = 0.1  # of the image side: 6.4 px at 64 px, more than a step of the agent


@dataclass
class PushObservation:
    """A batch over the episodes that need a new plan."""

    frames: np.ndarray  # uint8 (N, H, W, 3), rendered as the data source renders them
    instructions: list[str]
    tasks: list[PushTask]  # the scenes themselves, for the scripted expert


# -> (N, 2) actions or (N, chunk, 2) action chunks; the evaluator clips them to [-1, 1]
PushPolicy = Callable[[PushObservation], np.ndarray]


@dataclass
class PushEpisode:
    """One episode under way: its task, where the target block started, the actions planned ahead."""

    index: int
    task: PushTask
    start: np.ndarray
    record: bool
    steps: int = 0
    success: bool = False
    plan: deque = field(default_factory=deque)
    frames: list[np.ndarray] = field(default_factory=list)

    @property
    def pushed(self) -> float:
        """How far the target block has moved the asked way, as a fraction of the image side."""
        scene = self.task.scene
        return float((scene.blocks[self.task.target] - self.start) @ self.task.direction) / scene.size


def start_episode(index: int, seed: int, image_size: int, num_objects: int, record: bool) -> PushEpisode:
    task = new_task(np.random.default_rng(seed), image_size, num_objects)
    episode = PushEpisode(index, task, task.scene.blocks[task.target].copy(), record)
    if record:
        episode.frames.append(task.scene.render())
    return episode


def evaluate_push(
    policy: PushPolicy,
    episodes: int,
    *,
    image_size: int,
    num_objects: int,
    max_steps: int,
    seed: int,
    action_steps: int = 1,
    videos: int = 0,
    video_prefix: Path | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Success of ``policy`` over ``episodes`` seeded episodes of at most ``max_steps`` steps; the first
    ``videos`` episodes are written as ``{video_prefix}_{task}_{i}.mp4``."""
    if min(episodes, max_steps, action_steps, num_objects) < 1:
        raise ValueError("evaluate_push: episodes, max_steps, action_steps and num_objects must be >= 1")
    if videos and video_prefix is None:
        raise ValueError("evaluate_push: videos need a video_prefix")
    runs = [
        start_episode(i, episode_seed(seed, i), image_size, num_objects, i < videos) for i in range(episodes)
    ]
    bar = tqdm(total=max_steps, desc=f"evaluating {episodes} episodes", unit="step", disable=not progress)
    for _ in range(max_steps):
        active = [run for run in runs if not run.success]
        if not active:
            break
        if planning := [run for run in active if not run.plan]:
            chunks = policy(observe([run.task for run in planning]))
            for run, chunk in zip(
                planning, checked_actions(chunks, len(planning), action_steps, ACTION_SIZE), strict=True
            ):
                run.plan.extend(chunk)
        for run in active:
            step(run)
        bar.update()
        bar.set_postfix(success=sum(run.success for run in runs))
    bar.close()
    for run in runs:
        if run.record and video_prefix is not None:
            write_video(Path(f"{video_prefix}_{run.task.task}_{run.index}.mp4"), run.frames)
    outcomes = [(run.task.task, run.success, run.steps) for run in runs]
    return success_metrics(outcomes, sorted({run.task.task for run in runs}))


def observe(tasks: list[PushTask]) -> PushObservation:
    frames = np.stack([task.scene.render() for task in tasks])
    return PushObservation(frames, [task.instruction for task in tasks], tasks)


def step(run: PushEpisode) -> None:
    """One action of the episode's plan; success once the target block has been pushed far enough."""
    run.task.scene.step(run.plan.popleft())
    run.steps += 1
    run.success = run.pushed >= PUSH_DISTANCE
    if run.record:
        run.frames.append(run.task.scene.render())


def scripted_policy(seed: int) -> PushPolicy:
    """The data's noisy scripted expert, acting on the scenes (the upper bound for a learned policy)."""
    rng = np.random.default_rng(seed)
    return lambda obs: np.stack([scripted_action(t.scene, t.target, t.direction, rng) for t in obs.tasks])


def random_policy(seed: int) -> PushPolicy:
    """Uniform actions in [-1, 1]^2 from one generator seeded with ``seed`` (the lower bound)."""
    rng = np.random.default_rng(seed)
    return lambda obs: rng.uniform(-1.0, 1.0, size=(len(obs.tasks), ACTION_SIZE))
