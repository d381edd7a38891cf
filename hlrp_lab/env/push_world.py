"""The built-in push world: an agent (white disc) pushes coloured blocks in a 2D scene, rendered in numpy.

A task is "push the {colour} block {direction}": ``new_task`` draws the scene, the block and the direction
from a random generator, and ``scripted_action`` is the noisy scripted policy that walks round to the far side
of that block and pushes it. Actions are continuous 2-D velocities in [-1, 1]^2 (x right, y down), scaled to
``MAX_SPEED`` of the image side per step. Blocks are solid: a pushed block stops at a wall or another block, and
so does the agent behind it. The data source (``hlrp_lab.data.sources.procedural``) records episodes of this
world; ``hlrp_lab.env.procedural_eval`` runs a policy in it closed loop.
"""

from dataclasses import dataclass

import numpy as np

COLOURS = {
    "red": (220, 50, 47),
    "green": (60, 180, 75),
    "blue": (38, 110, 230),
    "yellow": (240, 200, 30),
    "purple": (150, 60, 190),
    "orange": (245, 130, 40),
}
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
BACKGROUND = (24, 24, 32)
AGENT_COLOUR = (245, 245, 245)
# Sizes as fractions of the image side. The agent collides as the square around its disc. At 64 px the agent
# (10 px across) moves up to 5 px a step: its own motion is the clearest change between frames t and t+1.
AGENT_RADIUS, BLOCK_HALF, MAX_SPEED, CLEARANCE = 0.08, 0.07, 0.08, 0.03
ACTION_NOISE = 0.3
ACTION_SIZE = 2  # x and y velocity
EPS = 1e-6  # pixels: blocks in contact are exactly 2 * half apart, up to rounding


class Scene:
    """Agent and block centres in pixels; ``step`` applies one action, ``render`` draws a frame."""

    def __init__(self, rng: np.random.Generator, image_size: int, colours: list[tuple[int, int, int]]):
        self.size = image_size
        self.agent_radius = AGENT_RADIUS * image_size
        self.half = BLOCK_HALF * image_size
        self.reach = self.half + self.agent_radius  # agent-block centre distance at contact, per axis
        self.colours = colours
        self.blocks = self.place_blocks(rng, len(colours))
        self.agent = self.place_agent(rng)
        self.coords = np.arange(image_size, dtype=np.float32) + 0.5

    @staticmethod
    def chebyshev(points: np.ndarray, point: np.ndarray) -> np.ndarray:
        return np.abs(points - point).max(axis=-1)

    def place_blocks(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """Block centres away from the walls, with a gap of at least a block's half side between blocks."""
        margin = self.half + 2 * self.agent_radius + 2 * CLEARANCE * self.size
        blocks = rng.uniform(margin, self.size - margin, size=(1, 2))
        while len(blocks) < count:  # the margins leave ample room: this ends after a few draws
            centre = rng.uniform(margin, self.size - margin, size=2)
            if self.chebyshev(blocks, centre).min() > 3 * self.half:
                blocks = np.vstack([blocks, centre])
        return blocks

    def place_agent(self, rng: np.random.Generator) -> np.ndarray:
        """An agent start clear of every block."""
        while True:
            agent = rng.uniform(self.agent_radius, self.size - self.agent_radius, size=2)
            if self.chebyshev(self.blocks, agent).min() > self.reach + CLEARANCE * self.size:
                return agent

    def step(self, action: np.ndarray) -> None:
        """Move the agent by ``action``; each block it runs into is pushed out along the axis of least overlap."""
        low, high = self.agent_radius, self.size - self.agent_radius
        self.agent = np.clip(self.agent + action * MAX_SPEED * self.size, low, high)
        for index in np.flatnonzero(self.chebyshev(self.blocks, self.agent) < self.reach):
            self.push(index)
        self.agent = np.clip(self.agent, low, high)

    def push(self, index: int) -> None:
        """Slide block ``index`` out of the agent; where a wall or block stops it, the agent backs off."""
        offset = self.blocks[index] - self.agent
        axis = int(np.argmax(np.abs(offset)))
        sign = 1.0 if offset[axis] >= 0 else -1.0
        low, high = self.free_span(index, axis)
        self.blocks[index, axis] = np.clip(self.agent[axis] + sign * self.reach, low, high)
        overlap = self.reach - abs(self.blocks[index, axis] - self.agent[axis])
        self.agent[axis] -= sign * max(overlap, 0.0)

    def free_span(self, index: int, axis: int) -> tuple[float, float]:
        """The range block ``index`` can slide over along ``axis`` before a wall or another block stops it."""
        block, across = self.blocks[index], 1 - axis
        others = np.delete(self.blocks, index, axis=0)
        lined_up = others[np.abs(others[:, across] - block[across]) < 2 * self.half - EPS, axis]
        high = min([self.size - self.half, *(lined_up[lined_up > block[axis]] - 2 * self.half)])
        low = max([self.half, *(lined_up[lined_up <= block[axis]] + 2 * self.half)])
        return low, high

    def render(self) -> np.ndarray:
        """One uint8 (H, W, 3) frame: blocks, then the agent, on the background."""
        frame = np.empty((self.size, self.size, 3), dtype=np.uint8)
        frame[:] = BACKGROUND
        for centre, colour in zip(self.blocks, self.colours, strict=True):
            frame[self.square_mask(centre)] = colour
        frame[self.disc_mask(self.agent)] = AGENT_COLOUR
        return frame

    def square_mask(self, centre: np.ndarray) -> np.ndarray:
        """(H, W) pixels of the block at ``centre``, broadcast from the pixel-centre coordinates."""
        x, y = centre
        return (np.abs(self.coords - y) <= self.half)[:, None] & (np.abs(self.coords - x) <= self.half)

    def disc_mask(self, centre: np.ndarray) -> np.ndarray:
        """(H, W) pixels of the agent's disc at ``centre``."""
        x, y = centre
        return ((self.coords - y) ** 2)[:, None] + (self.coords - x) ** 2 <= self.agent_radius**2


def waypoint(scene: Scene, target: int, direction: np.ndarray) -> np.ndarray:
    """Where the agent heads next: round the target block to its far side, then one step into it (a push)."""
    block, reach = scene.blocks[target], scene.reach
    across = direction[::-1]  # perpendicular to ``direction``
    along, lateral = (scene.agent - block) @ direction, (scene.agent - block) @ across
    side = across * (1.0 if lateral >= 0 else -1.0)
    clear = reach + CLEARANCE * scene.size
    if along <= EPS - reach:  # behind the block: line up with it and push
        return block + direction * (MAX_SPEED * scene.size - reach)
    if abs(lateral) < clear:  # in the block's lane, beside or in front of it: step out of the lane
        return block + side * clear + direction * along
    return block + side * clear - direction * clear  # clear of the lane: go round to the back corner


def scripted_action(scene: Scene, target: int, direction: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Full speed towards the next waypoint (slower when it is near), plus Gaussian noise, clipped."""
    aim = (waypoint(scene, target, direction) - scene.agent) / (MAX_SPEED * scene.size)
    aim /= max(1.0, np.abs(aim).max())
    return np.clip(aim + rng.normal(0, ACTION_NOISE, size=2), -1, 1).astype(np.float32)


@dataclass
class PushTask:
    """A scene and its goal: push block ``target`` along ``direction``."""

    scene: Scene
    target: int
    direction: np.ndarray  # unit vector, (x, y)
    instruction: str
    task: str


def new_task(rng: np.random.Generator, image_size: int, num_objects: int) -> PushTask:
    """A random scene of ``num_objects`` blocks and a random block and direction to push it in."""
    names = [str(name) for name in rng.choice(list(COLOURS), size=num_objects, replace=False)]
    scene = Scene(rng, image_size, [COLOURS[name] for name in names])
    target = int(rng.integers(num_objects))
    direction_name = str(rng.choice(list(DIRECTIONS)))
    return PushTask(
        scene,
        target,
        np.array(DIRECTIONS[direction_name]),
        f"push the {names[target]} block {direction_name}",
        f"push-{names[target]}-{direction_name}",
    )


def episode_seed(dataset_seed: int, index: int) -> int:
    """The seed of episode ``index`` of the episodes seeded by ``dataset_seed``."""
    return dataset_seed * 1_000_003 + index
