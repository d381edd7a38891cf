"""The Meta-World simulator: one task's goal-observable environment, scripted expert and fast headless renderer.

Seeds: episode ``i`` of a task starts from ``episode_seed(seed, task, i)``, which draws the object and goal
positions (Meta-World's random reset vector) independently of the other tasks listed. The data source and the
closed-loop evaluator use the same seeds and the same ``TaskSimulator``, so a policy is evaluated on exactly
the frames it was trained on (for the same ``image_size`` and ``camera``).

Rendering: MuJoCo offscreen on the CPU through ``MUJOCO_GL`` (egl when unset; osmesa works too). A simulator
keeps one ``mujoco.Renderer`` drawing ``image_size`` frames straight into a framebuffer of that size without
multisampling, shadows or reflections: about 7 ms a 64x64 frame against 75-100 ms for gymnasium's
``env.render()`` (``benchmarks/metaworld_render.py``). Meta-World's corner cameras are upside-down: their
frames are rotated by 180 degrees (LeRobot flips its "corner2" frames on both axes: the same). ``corner4`` is
the view LeRobot's Meta-World environment renders: its "corner2" moved to corner4's position
(``metaworld_tasks.LEROBOT_CAMERA``).

Never render in a process that imports torch: Mesa's llvmpipe loads its own LLVM, and a later import of triton
(which torch imports lazily, e.g. through torch.compile or einx) then crashes the process with a segmentation
fault. The data source and the evaluator render in spawned processes, one llvmpipe thread each
(``share_cores``).
"""

import os
import warnings
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hlrp_lab.lib.errors import RunError

if TYPE_CHECKING:
    import mujoco

UPSIDE_DOWN = {"corner", "corner2", "corner3", "corner4"}
GL_PACKAGES = (
    "MUJOCO_GL=egl needs the Debian packages libegl1 libegl-mesa0 libgl1-mesa-dri; osmesa needs libosmesa6"
)
STATE_SIZE = 39  # Meta-World's goal-observable observation
AGENT_STATE_SIZE = 4  # its first 4 values, hand xyz and gripper opening: LeRobot's observation.state
ACTION_SIZE = 4  # hand xyz displacement, gripper effort


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


def share_cores() -> None:
    """One Mesa llvmpipe render thread per process (unless set): the worker processes share the cores."""
    os.environ.setdefault("LP_NUM_THREADS", "1")


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


@dataclass(frozen=True)
class ExpertRollout:
    """An episode of the scripted expert: ``actions[i]`` moves frame ``i`` to frame ``i + 1``."""

    task: str
    seed: int
    frames: np.ndarray  # uint8 (T, H, W, 3)
    actions: np.ndarray  # float32 (T-1, 4), clipped to [-1, 1]
    states: np.ndarray  # float32 (T, 4): obs[:AGENT_STATE_SIZE], hand xyz and gripper opening
    success: np.ndarray  # bool (T,): info["success"] of the step that led to the frame (False at frame 0)


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

    def episode(self, seed: int, max_steps: int, after_success: int | None) -> ExpertRollout:
        """The expert from ``seed``: ``after_success`` steps after its first success (None: never stops
        early), ``max_steps`` steps at most."""
        obs = self.reset(seed)
        frames, actions, states, success = [self.render()], [], [obs[:AGENT_STATE_SIZE]], [False]
        stop = max_steps
        while len(actions) < stop:
            action = expert_action(self.policy, obs)
            obs, solved = self.step(action)
            frames.append(self.render())
            actions.append(action)
            states.append(obs[:AGENT_STATE_SIZE])
            success.append(solved)
            if solved and after_success is not None:
                stop = min(stop, len(actions) + after_success)  # later successes never extend it
        return ExpertRollout(
            task=self.task,
            seed=seed,
            frames=np.stack(frames),
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
