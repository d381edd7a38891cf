"""Closed-loop evaluation of policies in Meta-World: success rate over seeded episodes, rendered headless.

Episode ``i`` of a task starts from ``episode_seed(seed, task, i)`` (the data source's seeds: evaluate with a
seed other than the training data's) and ends at its first success (Meta-World's convention) or after
``max_steps`` steps. Environments and rendering live in the spawned worker processes of a gymnasium
``AsyncVectorEnv`` of ``MetaWorldEnv``, never in this one (Mesa's llvmpipe and torch's triton crash a process
that loads both: see ``hlrp_lab.env.metaworld_sim``); this process runs the policy once per step on the batch
of the active environments that need a new plan. An environment that finishes an episode starts the next one
waiting, task by task, until every episode is done; those left without one idle (stepped, ignored) until the
end.

A policy may return action chunks: each environment executes the first ``action_steps`` actions of its chunk
before the policy sees it again (LeRobot's ``n_action_steps``; 1 re-plans every step), and a new episode
starts with a new plan. Metrics: ``success_rate`` (0-1) and ``success/<task>``; LeRobot's ``pc_success``
(0-100) overall, per task (``pc_success/<task>``) and per difficulty group of the tasks evaluated
(``pc_success/<group>``), and ``pc_success_group_mean``, the mean of those groups' rates (the SmolVLA paper's
Meta-World average).

Frames are rendered by the data source's ``TaskSimulator``, so a policy sees exactly what it was trained on
for the same ``image_size`` and ``camera``. Results are deterministic for a given policy, seed and number of
workers; a policy whose actions depend on the batch (one random generator shared by all environments) gets
other batches, and so other results, with another number of workers. A worker that fails or dies stops the
evaluation with a one-line ``RunError`` naming its episode (gymnasium logs a failed worker's traceback).
"""

import signal
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode
from gymnasium.vector.async_vector_env import _async_worker
from tqdm import tqdm

from hlrp_lab.env.metaworld_env import MetaWorldEnv
from hlrp_lab.env.metaworld_sim import (
    ACTION_SIZE,
    AGENT_STATE_SIZE,
    episode_seed,
    expert_action,
    import_mujoco,
    share_cores,
)
from hlrp_lab.env.metaworld_tasks import DIFFICULTY_GROUPS, MAX_PATH_LENGTH, TASK_DESCRIPTIONS, task_group
from hlrp_lab.env.policy_output import checked_actions, success_metrics, write_video
from hlrp_lab.lib.errors import RunError, first_line
from hlrp_lab.lib.world import World


@dataclass
class Observation:
    """A batch over the active environments."""

    frames: np.ndarray  # uint8 (N, H, W, 3), rendered exactly as the dataset renders them
    states: np.ndarray  # float32 (N, 39): the full goal-observable Meta-World observation
    tasks: list[str]
    instructions: list[str]  # TASK_DESCRIPTIONS[task]

    @property
    def agent_states(self) -> np.ndarray:
        """float32 (N, 4): hand xyz and gripper opening, LeRobot's ``observation.state`` (the data's states)."""
        return self.states[:, :AGENT_STATE_SIZE]


# -> (N, 4) actions or (N, chunk, 4) action chunks; the evaluator clips them to [-1, 1]
Policy = Callable[[Observation], np.ndarray]


@dataclass
class Job:
    """One episode to run: episode ``index`` of ``task``, started from ``seed``."""

    task: str
    index: int
    seed: int
    record: bool


@dataclass
class Result:
    """How an episode ended: after how many steps, solved or not."""

    job: Job
    steps: int
    success: bool


@dataclass
class Slot:
    """One environment of the vector and the episode it runs."""

    job: Job | None = None
    steps: int = 0
    recorded: list[np.ndarray] = field(default_factory=list)
    plan: deque[np.ndarray] = field(default_factory=deque)  # actions of the latest chunk still to execute

    def start(self, job: Job) -> None:
        self.job, self.steps, self.recorded, self.plan = job, 0, [], deque()

    def observed(self, frame: np.ndarray) -> None:
        if self.job is not None and self.job.record:
            self.recorded.append(frame.copy())  # a view of the vector's shared memory: rewritten next step

    def describe(self) -> str:
        job = self.job
        return f"{job.task} episode {job.index} (seed {job.seed})" if job else "no episode"


def render_worker(*args: Any) -> None:
    """gymnasium's worker process, with Ctrl-C and stop requests (SIGUSR1, lib.stop) left to the main process
    (which terminates its workers) and one llvmpipe render thread (the workers share the cores)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    share_cores()
    _async_worker(*args)


def vector_env(count: int, image_size: int, camera: str, max_steps: int) -> AsyncVectorEnv:
    """``count`` spawned ``MetaWorldEnv`` processes (the one built here only gives the spaces: it renders
    nothing); observations in shared memory, read without a copy (``batch`` copies what it takes)."""
    envs = [partial(MetaWorldEnv, image_size, camera, max_steps, slot) for slot in range(count)]
    return AsyncVectorEnv(
        envs,
        context="spawn",  # a fresh process: no GL, LLVM or thread state copied
        copy=False,
        autoreset_mode=AutoresetMode.DISABLED,  # the evaluator resets each environment to its next episode
        worker=render_worker,
    )


def terminate(envs: AsyncVectorEnv) -> None:
    """Stop the workers now: one may be gone or mid-step, so no goodbyes (and no warning that one is)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*Calling `close` while waiting for a pending call")
        envs.close(terminate=True)


Reply = TypeVar("Reply")


def guarded(envs: AsyncVectorEnv, slots: list[Slot], call: Callable[[], Reply]) -> Reply:
    """``call()`` (a reset or step of ``envs``), a worker's error or death turned into a one-line RunError."""
    try:
        return call()
    except Exception as err:  # re-raised from a worker by gymnasium, or a pipe to a dead one
        raise failure(envs, slots, err) from err


def failure(envs: AsyncVectorEnv, slots: list[Slot], err: Exception) -> RunError:
    """The RunError of a failed call: the episode of the worker that raised ``err`` or died."""
    # gymnasium drops the pipe of a worker that raised; a dead worker is found by its process
    failed = [i for i, pipe in enumerate(envs.parent_pipes) if pipe is None]
    if failed:
        index, what = failed[0], f"the worker failed: {first_line(err)}"
    else:
        deadline, dead = time.monotonic() + 1.0, []
        while not dead and time.monotonic() < deadline:  # the pipe closes a moment before the process is gone
            dead = [i for i, process in enumerate(envs.processes) if not process.is_alive()]
            time.sleep(0.01)
        if not dead:
            return RunError(f"metaworld eval: {first_line(err)}")
        index = dead[0]
        what = f"the worker died (exit code {envs.processes[index].exitcode})"
        for i in dead:  # dropped as gymnasium drops a raiser's: closing the vector then terminates the rest
            envs.parent_pipes[i].close()
            envs.parent_pipes[i] = None
    return RunError(f"metaworld eval: {slots[index].describe()}: {what}")


def episode_jobs(tasks: list[str], episodes: int, seed: int, videos: int) -> list[Job]:
    """Every episode, task by task (a worker mostly keeps its simulator); the first ``videos`` of the order
    episode 0 of each task, episode 1 of each task, ... are recorded."""
    recorded = [(task, i) for i in range(episodes) for task in tasks][:videos]
    jobs = [(task, i) for task in tasks for i in range(episodes)]
    return [Job(task, i, episode_seed(seed, task, i), (task, i) in recorded) for task, i in jobs]


def batch(observation: dict[str, np.ndarray], slots: list[Slot], active: list[int]) -> Observation:
    """The policy's batch: the rows of the environments ``active`` (copied out of the vector's shared
    memory)."""
    tasks = [job.task for i in active if (job := slots[i].job) is not None]
    return Observation(
        frames=observation["frame"][active],
        states=observation["state"][active],
        tasks=tasks,
        instructions=[TASK_DESCRIPTIONS[task] for task in tasks],
    )


def metrics(results: list[Result], tasks: list[str]) -> dict[str, float]:
    """Success over every episode, per task and per difficulty group (the groups of ``tasks``), as rates and as
    LeRobot's percentages; the mean episode length and the number of episodes."""
    outcomes = [(r.job.task, r.success, r.steps) for r in results]
    return success_metrics(outcomes, tasks, task_group, DIFFICULTY_GROUPS)


def evaluate_policy(
    policy: Policy,
    tasks: list[str],
    episodes: int,
    *,
    image_size: int,
    camera: str,
    max_steps: int,
    seed: int,
    workers: int,
    action_steps: int = 1,
    videos: int = 0,
    video_prefix: Path | None = None,
) -> dict[str, float]:
    """Success (``metrics``) and mean episode length of ``policy`` over ``episodes`` seeded episodes per task,
    run in ``workers`` spawned processes, ``action_steps`` actions of each predicted chunk executed before the
    next prediction; the first ``videos`` episodes (one per task first) are written as
    ``{video_prefix}_{task}_{i}.mp4`` (``video_prefix``: a folder and the start of a file name)."""
    unknown = [task for task in tasks if task not in TASK_DESCRIPTIONS]
    if (
        unknown
        or not tasks
        or min(episodes, workers, action_steps) < 1
        or not 1 <= max_steps <= MAX_PATH_LENGTH
    ):
        raise ValueError(
            f"evaluate_policy: need known tasks (unknown: {unknown}), episodes, workers and action_steps >= 1 "
            f"and 1 <= max_steps <= {MAX_PATH_LENGTH}"
        )
    if videos and video_prefix is None:
        raise ValueError("evaluate_policy: videos need a video_prefix")
    pending = deque(episode_jobs(tasks, episodes, seed, videos))
    results: list[Result] = []
    slots = [Slot() for _ in range(min(workers, len(pending)))]
    progress = tqdm(total=len(pending), desc="evaluating", unit="episode", disable=not World.current().main)
    envs: AsyncVectorEnv | None = None
    try:
        envs = vector_env(len(slots), image_size, camera, max_steps)
        observation = start_next(envs, slots, list(range(len(slots))), pending)
        actions = np.zeros((len(slots), ACTION_SIZE), np.float32)  # an idle environment ignores its row
        while active := [i for i, slot in enumerate(slots) if slot.job is not None]:
            if planning := [i for i in active if not slots[i].plan]:
                chunks = checked_actions(
                    policy(batch(observation, slots, planning)), len(planning), action_steps, ACTION_SIZE
                )
                for i, chunk in zip(planning, chunks, strict=True):
                    slots[i].plan.extend(chunk)
            for i in active:
                actions[i] = slots[i].plan.popleft()
            observation, _, terminated, truncated, _ = guarded(envs, slots, partial(envs.step, actions))
            done = []
            for i in active:
                slots[i].steps += 1
                slots[i].observed(observation["frame"][i])
                if terminated[i] or truncated[i]:
                    done.append(i)
                    results.append(finish(slots[i], bool(terminated[i]), video_prefix))
                    progress.update()
                    progress.set_postfix(success=f"{np.mean([r.success for r in results]):.2f}")
            observation = start_next(envs, slots, done, pending) if done else observation
    except BaseException:
        if envs is not None:
            terminate(envs)
        raise
    else:
        envs.close()
    finally:
        progress.close()
    return metrics(results, tasks)


def start_next(
    envs: AsyncVectorEnv, slots: list[Slot], indices: list[int], pending: deque[Job]
) -> dict[str, np.ndarray]:
    """Reset the environments ``indices`` to the next pending episodes, all in parallel (those left over go
    idle); the observation of every environment."""
    started = []
    for i in indices:
        slots[i].job = None
        if pending:
            slots[i].start(pending.popleft())
            started.append(i)
    if not started:
        return envs.observations
    mask = np.isin(np.arange(len(slots)), started)
    seeds = [job.seed if (job := slots[i].job) is not None and mask[i] else None for i in range(len(slots))]
    options = {"reset_mask": mask, "task": [job.task if (job := slot.job) else None for slot in slots]}
    observation, _ = guarded(envs, slots, partial(envs.reset, seed=seeds, options=options))
    for i in started:
        slots[i].observed(observation["frame"][i])
    return observation


def finish(slot: Slot, success: bool, video_prefix: Path | None) -> Result:
    """The slot's episode result; its video written if it is recorded."""
    assert slot.job is not None
    job = slot.job
    if job.record and video_prefix is not None:
        write_video(Path(f"{video_prefix}_{job.task}_{job.index}.mp4"), slot.recorded)
    return Result(job, slot.steps, success)


def expert_policy() -> Policy:
    """Meta-World's scripted expert of each environment's task, acting on its state."""
    import_mujoco()  # metaworld imports MuJoCo: with the same MUJOCO_GL as the workers (nothing is rendered)
    from metaworld.policies import ENV_POLICY_MAP

    experts: dict[str, Any] = {}

    def act(obs: Observation) -> np.ndarray:
        actions = []
        for task, state in zip(obs.tasks, obs.states, strict=True):
            if task not in experts:
                experts[task] = ENV_POLICY_MAP[task]()
            actions.append(expert_action(experts[task], state.astype(np.float64)))
        return np.stack(actions)

    return act


def random_policy(seed: int) -> Policy:
    """Uniform actions in [-1, 1]^4 from one generator seeded with ``seed`` (its state carries over calls)."""
    rng = np.random.default_rng(seed)
    return lambda obs: rng.uniform(-1.0, 1.0, size=(len(obs.tasks), 4))
