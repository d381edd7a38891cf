"""Meta-World expert demonstrations: the scripted policies of ``metaworld.policies``, rendered headless.

Tasks: comma-separated Meta-World v3 names (``reach-v3,push-v3``), a difficulty set of the MT50 split as
LeRobot groups it (``easy`` 28 tasks, ``medium`` 11, ``hard`` 6, ``very_hard`` 5), ``mt10`` or ``mt50``.
Each episode's instruction is LeRobot's description of its task ("Reach a goal position").

Episodes: episode ``i`` of a task has the seed ``episode_seed(seed, task, i)``, which draws the object and goal
positions (Meta-World's random reset vector), so a config regenerates identical episodes whatever ``workers``
and whichever other tasks it lists. The expert acts on the goal-observable observation; its action, clipped
to [-1, 1], is recorded (float32: hand xyz displacement, gripper effort). ``states`` are the proprio part of
the observation, ``obs[:4]``: hand xyz and gripper opening (float32), LeRobot's ``observation.state`` and what
the closed-loop evaluator hands a policy (``Observation.agent_states``). ``success[t]`` is ``info["success"]``
of the step that led to frame ``t`` (False at frame 0). An episode ends ``after_success`` steps after its
first success or after ``max_steps`` steps; episodes the expert fails are kept (``success`` all False).

Rendering: the simulator of ``hlrp_lab.env.metaworld_sim`` (fast headless MuJoCo, ``MUJOCO_GL``), one per
process and task. Episodes are rendered in a spawned pool of ``workers`` processes (never in the caller's: see
``demonstrations``), one Mesa llvmpipe thread per process unless ``LP_NUM_THREADS`` says otherwise; a script
that uses it needs the ``if __name__ == "__main__":`` guard.
"""

import multiprocessing
from collections.abc import Iterator
from typing import Any

from hlrp_lab.data.episode import Episode
from hlrp_lab.data.sources import DATA_SOURCES
from hlrp_lab.data.sources.config import MetaWorldConfig
from hlrp_lab.env.metaworld_sim import ExpertRollout, SimulatorSlot, episode_seed, share_cores
from hlrp_lab.env.metaworld_tasks import TASK_DESCRIPTIONS, resolve_tasks


def to_episode(rollout: ExpertRollout) -> Episode:
    """The recorded episode of an expert rollout, its task's description as the instruction."""
    return Episode(
        frames=rollout.frames,
        instruction=TASK_DESCRIPTIONS[rollout.task],
        task=rollout.task,
        seed=rollout.seed,
        actions=rollout.actions,
        states=rollout.states,
        success=rollout.success,
    )


class Demonstrator:
    """Renders the expert episodes of one process."""

    def __init__(self, image_size: int, camera: str, max_steps: int, after_success: int | None):
        self.slot = SimulatorSlot(image_size, camera)
        self.max_steps, self.after_success = max_steps, after_success

    def __call__(self, job: tuple[str, int]) -> Episode:
        task, seed = job
        return to_episode(self.slot.simulator_for(task).episode(seed, self.max_steps, self.after_success))


WORKER: Demonstrator | None = None  # a pool process's demonstrator


def start_worker(*settings: Any) -> None:
    global WORKER
    share_cores()
    WORKER = Demonstrator(*settings)


def run_job(job: tuple[str, int]) -> Episode:
    assert WORKER is not None
    return WORKER(job)


def demonstrations(
    jobs: list[tuple[str, int]], workers: int, settings: tuple[int, str, int, int | None]
) -> Iterator[Episode]:
    """The episodes of ``jobs`` (task, seed) in order, rendered by a spawned pool of ``workers`` processes.

    Never in this process: rendering and torch do not share a process (``hlrp_lab.env.metaworld_sim``).
    """
    context = multiprocessing.get_context("spawn")  # a fresh process: no GL, LLVM or thread state copied
    with context.Pool(min(workers, len(jobs)), initializer=start_worker, initargs=settings) as pool:
        yield from pool.imap(run_job, jobs)


@DATA_SOURCES.register_as("metaworld")
class MetaWorldSource:
    """Meta-World scripted experts: frames, 4-D actions, proprio states, success and an instruction."""

    Config = MetaWorldConfig

    def __init__(self, config: MetaWorldConfig, *, image_size: int):
        self.config = config
        self.image_size = image_size
        self.tasks = resolve_tasks(config.tasks)

    def __len__(self) -> int:
        return len(self.tasks) * self.config.episodes

    def jobs(self) -> list[tuple[str, int]]:
        """(task, seed) of every episode, task by task, so that a process mostly keeps its simulator."""
        indices = range(self.config.episodes)
        return [(task, episode_seed(self.config.seed, task, i)) for task in self.tasks for i in indices]

    def episodes(self) -> Iterator[Episode]:
        config = self.config
        settings = (self.image_size, config.camera, config.max_steps, config.after_success)
        return demonstrations(self.jobs(), config.workers, settings)
