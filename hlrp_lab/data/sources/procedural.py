"""Built-in procedural data: episodes of the push world (``hlrp_lab.env.push_world``), with true actions.

Each episode has a goal, "push the {colour} block {direction}", and the noisy scripted policy pushing that
block; everything is a pure function of the episode seed.
"""

from collections.abc import Iterator
from typing import ClassVar

import numpy as np

from hlrp_lab.data.episode import Episode
from hlrp_lab.data.sources import DATA_SOURCES
from hlrp_lab.data.sources.config import ProceduralConfig
from hlrp_lab.env.push_world import episode_seed, new_task, scripted_action


def generate_episode(seed: int, image_size: int, episode_length: int, num_objects: int) -> Episode:
    """One episode of ``episode_length`` frames: the policy pushing a random block in a random direction."""
    rng = np.random.default_rng(seed)
    task = new_task(rng, image_size, num_objects)
    frames, actions = [task.scene.render()], []
    for _ in range(episode_length - 1):
        actions.append(scripted_action(task.scene, task.target, task.direction, rng))
        task.scene.step(actions[-1])
        frames.append(task.scene.render())
    return Episode(
        frames=np.stack(frames),
        actions=np.stack(actions),
        instruction=task.instruction,
        task=task.task,
        seed=seed,
    )


def generate_episodes(config: ProceduralConfig, image_size: int) -> Iterator[Episode]:
    """The ``config.episodes`` episodes of the dataset, in order."""
    for index in range(config.episodes):
        seed = episode_seed(config.seed, index)
        yield generate_episode(seed, image_size, config.episode_length, config.num_objects)


@DATA_SOURCES.register_as("procedural")
class ProceduralSource:
    """An agent pushing coloured blocks, with true 2-D actions and an instruction per episode."""

    Config = ProceduralConfig
    # Recorded in the manifest and part of the cache key: a change of the generator gives new shards.
    manifest_extra: ClassVar[dict[str, int]] = {"generator": 2}

    def __init__(self, config: ProceduralConfig, *, image_size: int):
        self.config = config
        self.image_size = image_size

    def __len__(self) -> int:
        return self.config.episodes

    def episodes(self) -> Iterator[Episode]:
        return generate_episodes(self.config, self.image_size)
