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
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hlrp_lab.components.registry import DATA_SOURCES
from hlrp_lab.data.episode import Episode
from hlrp_lab.lib.errors import RunError

if TYPE_CHECKING:
    import mujoco

TASK_DESCRIPTIONS = {
    "assembly-v3": "Pick up a nut and place it onto a peg",
    "basketball-v3": "Dunk the basketball into the basket",
    "bin-picking-v3": "Grasp the puck from one bin and place it into another bin",
    "box-close-v3": "Grasp the cover and close the box with it",
    "button-press-topdown-v3": "Press a button from the top",
    "button-press-topdown-wall-v3": "Bypass a wall and press a button from the top",
    "button-press-v3": "Press a button",
    "button-press-wall-v3": "Bypass a wall and press a button",
    "coffee-button-v3": "Push a button on the coffee machine",
    "coffee-pull-v3": "Pull a mug from a coffee machine",
    "coffee-push-v3": "Push a mug under a coffee machine",
    "dial-turn-v3": "Rotate a dial 180 degrees",
    "disassemble-v3": "Pick a nut out of a peg",
    "door-close-v3": "Close a door with a revolving joint",
    "door-lock-v3": "Lock the door by rotating the lock clockwise",
    "door-open-v3": "Open a door with a revolving joint",
    "door-unlock-v3": "Unlock the door by rotating the lock counter-clockwise",
    "drawer-close-v3": "Push and close a drawer",
    "drawer-open-v3": "Open a drawer",
    "faucet-close-v3": "Rotate the faucet clockwise",
    "faucet-open-v3": "Rotate the faucet counter-clockwise",
    "hammer-v3": "Hammer a screw on the wall",
    "hand-insert-v3": "Insert the gripper into a hole",
    "handle-press-side-v3": "Press a handle down sideways",
    "handle-press-v3": "Press a handle down",
    "handle-pull-side-v3": "Pull a handle up sideways",
    "handle-pull-v3": "Pull a handle up",
    "lever-pull-v3": "Pull a lever down 90 degrees",
    "peg-insert-side-v3": "Insert a peg sideways",
    "peg-unplug-side-v3": "Unplug a peg sideways",
    "pick-out-of-hole-v3": "Pick up a puck from a hole",
    "pick-place-v3": "Pick and place a puck to a goal",
    "pick-place-wall-v3": "Pick a puck, bypass a wall and place the puck",
    "plate-slide-back-side-v3": "Get a plate from the cabinet sideways",
    "plate-slide-back-v3": "Get a plate from the cabinet",
    "plate-slide-side-v3": "Slide a plate into a cabinet sideways",
    "plate-slide-v3": "Slide a plate into a cabinet",
    "push-back-v3": "Push the puck to a goal",
    "push-v3": "Push the puck to a goal",
    "push-wall-v3": "Bypass a wall and push a puck to a goal",
    "reach-v3": "Reach a goal position",
    "reach-wall-v3": "Bypass a wall and reach a goal",
    "shelf-place-v3": "Pick and place a puck onto a shelf",
    "soccer-v3": "Kick a soccer into the goal",
    "stick-pull-v3": "Grasp a stick and pull a box with the stick",
    "stick-push-v3": "Grasp a stick and push a box using the stick",
    "sweep-into-v3": "Sweep a puck into a hole",
    "sweep-v3": "Sweep a puck off the table",
    "window-close-v3": "Push and close a window",
    "window-open-v3": "Push and open a window",
}
TASK_SETS = {
    "easy": [
        *(
            "button-press-v3",
            "button-press-topdown-v3",
            "button-press-topdown-wall-v3",
            "button-press-wall-v3",
        ),
        *("coffee-button-v3", "dial-turn-v3", "door-close-v3", "door-lock-v3", "door-open-v3"),
        *("door-unlock-v3", "drawer-close-v3", "drawer-open-v3", "faucet-close-v3", "faucet-open-v3"),
        *("handle-press-v3", "handle-press-side-v3", "handle-pull-v3", "handle-pull-side-v3"),
        *("lever-pull-v3", "plate-slide-v3", "plate-slide-back-v3", "plate-slide-back-side-v3"),
        *("plate-slide-side-v3", "reach-v3", "reach-wall-v3", "window-close-v3", "window-open-v3"),
        "peg-unplug-side-v3",
    ],
    "medium": [
        *("basketball-v3", "bin-picking-v3", "box-close-v3", "coffee-pull-v3", "coffee-push-v3"),
        *("hammer-v3", "peg-insert-side-v3", "push-wall-v3", "soccer-v3", "sweep-v3", "sweep-into-v3"),
    ],
    "hard": [
        "assembly-v3",
        "hand-insert-v3",
        "pick-out-of-hole-v3",
        "pick-place-v3",
        "push-v3",
        "push-back-v3",
    ],
    "very_hard": ["shelf-place-v3", "disassemble-v3", "stick-pull-v3", "stick-push-v3", "pick-place-wall-v3"],
    "mt10": [
        *("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3"),
        *("button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3"),
    ],
    "mt50": sorted(TASK_DESCRIPTIONS),
}
# The cameras of Meta-World's scene (xyz_base.xml); the corner ones render upside-down.
Camera = Literal["corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV"]
MAX_PATH_LENGTH = 500  # Meta-World refuses to step an episode further
UPSIDE_DOWN = {"corner", "corner2", "corner3", "corner4"}
GL_PACKAGES = (
    "MUJOCO_GL=egl needs the Debian packages libegl1 libegl-mesa0 libgl1-mesa-dri; osmesa needs libosmesa6"
)


def resolve_tasks(tasks: str) -> list[str]:
    """The task names of a ``tasks`` string: a task set's name, or comma-separated task names."""
    if tasks.strip() in TASK_SETS:
        return TASK_SETS[tasks.strip()]
    names = list(dict.fromkeys(name.strip() for name in tasks.split(",") if name.strip()))
    unknown = [name for name in names if name not in TASK_DESCRIPTIONS]
    if unknown or not names:
        raise ValueError(
            f"unknown Meta-World tasks {unknown}: give v3 names such as reach-v3,push-v3, or one of "
            f"{', '.join(TASK_SETS)}"
        )
    return names


class MetaWorldConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: str = Field(
        "easy",
        description="Comma-separated Meta-World v3 tasks (reach-v3,push-v3), or one of easy, medium, hard, "
        "very_hard (the MT50 difficulty split), mt10, mt50.",
    )
    episodes: int = Field(10, gt=0, description="Episodes per task.")
    max_steps: int = Field(
        150, ge=1, le=MAX_PATH_LENGTH, description="Steps per episode at most (frames: one more)."
    )
    after_success: int | None = Field(
        10,
        ge=0,
        description="Steps recorded after the first success before stopping; null runs to max_steps.",
    )
    camera: Camera = Field("corner2", description="Meta-World camera; corner4 is LeRobot's closer view.")
    seed: int = Field(0, ge=0, description="Dataset seed; every episode keeps its own seed, derived from it.")
    workers: int = Field(1, ge=1, description="Rendering processes (spawned; never the caller's own).")

    @field_validator("tasks")
    @classmethod
    def known_tasks(cls, tasks: str) -> str:
        resolve_tasks(tasks)
        return tasks


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
