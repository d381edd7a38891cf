"""The Meta-World simulator as a ``gymnasium.Env`` whose task is chosen at each reset, for vector environments.

``reset(seed=s, options={"task": "reach-v3"})`` starts the episode of that task that ``s`` draws
(``episode_seed``); the observation is a dict of the rendered ``frame`` (uint8 ``(S, S, 3)``) and the full
goal-observable ``state`` (float32 ``(39,)``). A step is terminated at the first success (Meta-World's
convention, ``info["success"]``; the reward is 1.0 then, else 0.0) and truncated after ``max_steps`` steps.
A step after the end changes nothing and returns what the last step returned: an ``AsyncVectorEnv`` steps all
its environments at once, and its user ignores those whose episode is over.

An ``AsyncVectorEnv`` sends one ``options`` dict to all the environments it resets, so ``options["task"]`` may
also be a sequence with one task per environment: each takes the entry at its ``slot``.

Nothing is built before the first reset: the vector environment constructs one env in the calling process to
read the spaces, and that process must never render (``hlrp_lab.env.metaworld_sim``).
"""

from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hlrp_lab.env.metaworld_sim import ACTION_SIZE, STATE_SIZE, SimulatorSlot, TaskSimulator


class MetaWorldEnv(gym.Env):
    """One process's Meta-World simulator, on whichever task each reset names."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}
    render_mode = "rgb_array"

    def __init__(self, image_size: int, camera: str, max_steps: int, slot: int = 0):
        self.observation_space = spaces.Dict(
            {
                "frame": spaces.Box(0, 255, (image_size, image_size, 3), np.uint8),
                "state": spaces.Box(-np.inf, np.inf, (STATE_SIZE,), np.float32),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_SIZE,), np.float32)
        self.max_steps, self.slot = max_steps, slot
        self.simulators = SimulatorSlot(image_size, camera)
        self.simulator: TaskSimulator | None = None
        self.observation: dict[str, np.ndarray] = {}
        self.steps, self.success, self.over = 0, False, True

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        task = (options or {}).get("task")
        if not isinstance(task, str) and isinstance(task, Sequence):
            task = task[self.slot]
        if not isinstance(task, str) or seed is None:
            raise ValueError("MetaWorldEnv.reset needs a seed and options={'task': <Meta-World v3 task>}")
        self.simulator = self.simulators.simulator_for(task)
        self.steps, self.success, self.over = 0, False, False
        return self.observe(self.simulator.reset(seed)), {}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self.simulator is None:
            raise RuntimeError("MetaWorldEnv.step before its first reset")
        if not self.over:  # after the end: what the last step returned, again
            obs, self.success = self.simulator.step(action)
            self.steps += 1
            self.over = self.success or self.steps >= self.max_steps
            self.observe(obs)
        truncated = self.steps >= self.max_steps
        return self.observation, float(self.success), self.success, truncated, {"success": self.success}

    def observe(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        assert self.simulator is not None
        self.observation = {"frame": self.simulator.render(), "state": obs.astype(np.float32)}
        return self.observation

    def render(self) -> np.ndarray | None:
        return self.observation.get("frame")

    def close(self) -> None:
        self.simulators.close()
        self.simulator = None
