"""Meta-World expert demonstrations: the scripted policies of ``metaworld.policies``, rendered headless.

Tasks: comma-separated Meta-World v3 names (``reach-v3,push-v3``), a difficulty set of the MT50 split as
LeRobot groups it (``easy`` 28 tasks, ``medium`` 11, ``hard`` 6, ``very_hard`` 5), ``mt10`` or ``mt50``.
Each episode's instruction is LeRobot's description of its task ("Reach a goal position").

Episodes: episode ``i`` of a task has the seed ``episode_seed(seed, task, i)``, which draws the object and goal
positions (Meta-World's random reset vector), so a config regenerates identical episodes whatever ``workers``
and whichever other tasks it lists. The expert acts on the goal-observable observation; its action, clipped
to [-1, 1], is recorded (float32: hand xyz displacement, gripper effort). ``states`` are the proprio part of
the observation, ``obs[:4]``: hand xyz and gripper opening (float32). ``success[t]`` is ``info["success"]``
of the step that led to frame ``t`` (False at frame 0). An episode ends ``after_success`` steps after its
first success or after ``max_steps`` steps; episodes the expert fails are kept (``success`` all False).

Rendering: MuJoCo offscreen on the CPU through ``MUJOCO_GL`` (egl when unset; osmesa works too). Each process
keeps one ``mujoco.Renderer`` per task, drawing ``image_size`` frames straight into a framebuffer of that size
without multisampling, shadows or reflections: about 7 ms a 64x64 frame against 75-100 ms for gymnasium's
``env.render()`` (``benchmarks/metaworld_render.py``). Episodes are rendered in a spawned pool of ``workers``
processes (never in the caller's: see ``demonstrations``), one Mesa llvmpipe thread per process unless
``LP_NUM_THREADS`` says otherwise; a script that uses it needs the ``if __name__ == "__main__":`` guard. Meta-World's corner cameras are upside-down: their frames are rotated by
180 degrees. ``corner4`` is the closer view LeRobot uses (its "corner2" moved to corner4's position).
"""

import multiprocessing
import os
import warnings
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from hlrp_lab.data.episode import Episode
from hlrp_lab.data.sources import DATA_SOURCES
from hlrp_lab.data.sources.config import MetaWorldConfig
from hlrp_lab.env.metaworld_tasks import TASK_DESCRIPTIONS, resolve_tasks
from hlrp_lab.lib.errors import RunError

if TYPE_CHECKING:
    import mujoco

UPSIDE_DOWN = {"corner", "corner2", "corner3", "corner4"}
GL_PACKAGES = (
    "MUJOCO_GL=egl needs the Debian packages libegl1 libegl-mesa0 libgl1-mesa-dri; osmesa needs libosmesa6"
)


def episode_seed(dataset_seed: int, task: str, index: int) -> int:
    """The seed of episode ``index`` of ``task``: independent of the other tasks listed."""
    sequence = np.random.SeedSequence([dataset_seed, zlib.crc32(task.encode()), index])
    return int(sequence.generate_state(1)[0])


def gl_error(err: Exception) -> RunError:
    backend = os.environ.get("MUJOCO_GL")
    return RunError(f"metaworld: MuJoCo cannot render with MUJOCO_GL={backend} ({err}); {GL_PACKAGES}")


def import_mujoco() -> None:
    """Import MuJoCo with ``MUJOCO_GL`` set (egl unless the environment names a backend)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import mujoco  # noqa: F401
    except Exception as err:
        raise gl_error(err) from err


def fast_renderer(model: "mujoco.MjModel", size: int) -> "mujoco.Renderer":
    """A renderer for ``size`` x ``size`` frames: framebuffer of that size, no MSAA, shadows or reflections."""
    import mujoco

    model.vis.global_.offwidth = model.vis.global_.offheight = size
    model.vis.quality.offsamples = 0
    try:
        renderer = mujoco.Renderer(model, size, size)
    except Exception as err:
        raise gl_error(err) from err
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
    return renderer


def expert_action(policy: Any, obs: np.ndarray) -> np.ndarray:
    """A scripted expert's (``metaworld.policies``) action on ``obs``, clipped to [-1, 1] (float32)."""
    with warnings.catch_warnings():  # the experts warn when their gains exceed the action range
        warnings.simplefilter("ignore", UserWarning)
        return np.clip(policy.get_action(obs), -1.0, 1.0).astype(np.float32)


class TaskSimulator:
    """One task's goal-observable environment, expert policy and renderer, reused across its episodes."""

    def __init__(self, task: str, image_size: int, camera: str):
        import_mujoco()
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
        from metaworld.policies import ENV_POLICY_MAP

        self.task = task
        self.env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{task}-goal-observable"](seed=0)
        self.policy = ENV_POLICY_MAP[task]()
        self.renderer = fast_renderer(self.env.model, image_size)
        self.camera = camera

    def reset(self, seed: int) -> np.ndarray:
        """Start an episode at the object and goal positions that ``seed`` draws; returns the observation."""
        import mujoco

        self.env.seed(seed)
        self.env._freeze_rand_vec, self.env.seeded_rand_vec = False, True
        obs, _ = self.env.reset()
        mujoco.mj_forward(self.env.model, self.env.data)  # reset moves bodies and sites, not their poses
        return obs

    def render(self) -> np.ndarray:
        self.renderer.update_scene(self.env.data, camera=self.camera)
        frame = self.renderer.render()
        return frame[::-1, ::-1] if self.camera in UPSIDE_DOWN else frame

    def step(self, action: np.ndarray) -> tuple[np.ndarray, bool]:
        """Apply ``action``; the next observation and whether the task is solved."""
        obs, _, _, _, info = self.env.step(action)
        return obs, bool(info["success"])

    def episode(self, seed: int, max_steps: int, after_success: int | None) -> Episode:
        obs = self.reset(seed)
        frames, actions, states, success = [self.render()], [], [obs[:4]], [False]
        stop = max_steps
        while len(actions) < stop:
            action = expert_action(self.policy, obs)
            obs, solved = self.step(action)
            frames.append(self.render())
            actions.append(action)
            states.append(obs[:4])
            success.append(solved)
            if solved and after_success is not None:
                stop = min(stop, len(actions) + after_success)  # later successes never extend it
        return Episode(
            frames=np.stack(frames),
            instruction=TASK_DESCRIPTIONS[self.task],
            task=self.task,
            seed=seed,
            actions=np.stack(actions),
            states=np.stack(states).astype(np.float32),
            success=np.array(success),
        )

    def close(self) -> None:
        self.renderer.close()
        self.env.close()


class SimulatorSlot:
    """A process's simulator, kept while its episodes stay on one task (building one takes a while)."""

    def __init__(self, image_size: int, camera: str):
        self.image_size, self.camera = image_size, camera
        self.simulator: TaskSimulator | None = None

    def simulator_for(self, task: str) -> TaskSimulator:
        if self.simulator is None or self.simulator.task != task:
            self.close()
            self.simulator = TaskSimulator(task, self.image_size, self.camera)
        return self.simulator

    def close(self) -> None:
        if self.simulator is not None:
            self.simulator.close()
            self.simulator = None  # closed: not again if the next one fails to build


class Demonstrator:
    """Renders the expert episodes of one process."""

    def __init__(self, image_size: int, camera: str, max_steps: int, after_success: int | None):
        self.slot = SimulatorSlot(image_size, camera)
        self.max_steps, self.after_success = max_steps, after_success

    def __call__(self, job: tuple[str, int]) -> Episode:
        task, seed = job
        return self.slot.simulator_for(task).episode(seed, self.max_steps, self.after_success)


WORKER: Demonstrator | None = None  # a pool process's demonstrator


def share_cores() -> None:
    """One Mesa llvmpipe render thread per process (unless set): the worker processes share the cores."""
    os.environ.setdefault("LP_NUM_THREADS", "1")


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

    Never in this process: Mesa's llvmpipe loads its own LLVM, and a later import of triton (which torch
    imports lazily, e.g. through torch.compile or einx) then crashes the process with a segmentation fault.
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
