"""Procedural episodes, WebDataset shards on disk, the shard cache, and frame-pair sampling."""

import hashlib
import itertools
import tarfile
from pathlib import Path

import numpy as np
import pytest

from hlrp_lab.data.shards import (
    cache_key,
    cached_shards,
    read_episodes,
    read_manifest,
    shard_urls,
    verify_shards,
    write_shards,
)
from hlrp_lab.data.sources.procedural import ProceduralConfig, generate_episode, generate_episodes
from hlrp_lab.env.push_world import AGENT_COLOUR, COLOURS, DIRECTIONS, MAX_SPEED, Scene

SIZE = 32
RED, GREEN = COLOURS["red"], COLOURS["green"]


def centroid(frame: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    ys, xs = np.nonzero((frame == colour).all(-1))
    return np.array([xs.mean(), ys.mean()])


def scene(agent: list[float], blocks: list[list[float]]) -> Scene:
    """A 64x64 scene with the agent and red, green, ... blocks where the test wants them."""
    colours = list(COLOURS.values())[: len(blocks)]
    made = Scene(np.random.default_rng(0), 64, colours)
    made.agent, made.blocks = np.array(agent), np.array(blocks)
    return made


@pytest.mark.parametrize("action", [(1.0, -0.5), (-0.8, 0.0), (0.3, 1.0)])
def test_agent_moves_in_the_direction_of_its_action(action):
    world = scene(agent=[32.0, 32.0], blocks=[[58.0, 58.0]])
    before = centroid(world.render(), AGENT_COLOUR)
    for _ in range(3):
        world.step(np.array(action))
    moved = centroid(world.render(), AGENT_COLOUR) - before
    assert np.allclose(moved, 3 * np.array(action) * MAX_SPEED * 64, atol=1.0)


def test_a_pushed_block_moves_and_stops_at_the_wall():
    world = scene(agent=[20.0, 32.0], blocks=[[32.0, 32.0]])
    before = centroid(world.render(), RED)
    for _ in range(6):
        world.step(np.array([1.0, 0.0]))
    after = centroid(world.render(), RED)
    assert after[0] > before[0] + 5 and abs(after[1] - before[1]) < 0.5
    for _ in range(30):
        world.step(np.array([1.0, 0.0]))
    assert world.blocks[0, 0] == pytest.approx(
        64 - world.half
    )  # flush against the right wall, inside the frame
    assert world.agent[0] == pytest.approx(world.blocks[0, 0] - world.reach)  # the agent stopped behind it
    assert (world.render()[:, -1] == RED).all(-1).any()


def test_blocks_are_solid():
    world = scene(agent=[10.0, 32.0], blocks=[[24.0, 32.0], [42.0, 33.0]])
    green = (world.render() == GREEN).all(-1)
    for _ in range(20):
        world.step(np.array([1.0, 0.0]))
    frame = world.render()
    assert world.blocks[1, 0] - world.blocks[0, 0] == pytest.approx(
        2 * world.half
    )  # red stopped against green
    assert np.array_equal((frame == GREEN).all(-1), green)  # green did not move and is not covered
    assert np.nonzero((frame == RED).all(-1))[1].max() < np.nonzero(green)[1].min()


def test_episodes_are_deterministic_in_seed_and_match_their_instruction():
    a, b, c = (generate_episode(seed, SIZE, 10, 3) for seed in (5, 5, 6))
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.actions, b.actions) and a.task == b.task
    assert not np.array_equal(a.frames, c.frames)
    assert a.frames.shape == (10, SIZE, SIZE, 3) and a.frames.dtype == np.uint8
    assert a.actions.shape == (9, 2) and a.actions.dtype == np.float32 and np.abs(a.actions).max() <= 1
    _, colour, direction = a.task.split("-")
    assert a.instruction == f"push the {colour} block {direction}" and a.seed == 5
    assert (a.frames[0] == COLOURS[colour]).all(-1).any()


def test_the_scripted_policy_pushes_the_target_block_in_the_goal_direction():
    episodes = [generate_episode(seed, 64, 32, 3) for seed in range(20)]
    pushed = 0
    for episode in episodes:
        _, colour, direction = episode.task.split("-")
        moved = centroid(episode.frames[-1], COLOURS[colour]) - centroid(episode.frames[0], COLOURS[colour])
        pushed += moved @ np.array(DIRECTIONS[direction]) > 3
    assert pushed >= 15
    assert len({e.task for e in episodes}) > 10


def test_generate_episodes_with_the_most_objects():
    config = ProceduralConfig(episodes=2, episode_length=25, num_objects=4)
    frames = np.concatenate([e.frames for e in generate_episodes(config, 64)])
    assert frames.shape == (50, 64, 64, 3)


def write_dataset(directory: Path, episodes: int = 6, length: int = 8, shard_size_mb: float = 64.0):
    config = ProceduralConfig(episodes=episodes, episode_length=length, num_objects=2, seed=3)
    source_episodes = list(generate_episodes(config, SIZE))
    manifest = write_shards(
        source_episodes,
        directory,
        name="proc",
        source="procedural",
        source_args=config.model_dump(),
        total=episodes,
        shard_size_mb=shard_size_mb,
    )
    return source_episodes, manifest


def test_shards_are_tar_files_that_read_back_bit_identical(tmp_path):
    episodes, manifest = write_dataset(tmp_path)
    assert manifest["num_episodes"] == manifest["num_samples"] == 6 and manifest["num_frames"] == 48
    assert manifest["image_size"] == SIZE and manifest["sample_unit"] == "episode"
    assert [s["file"] for s in manifest["shards"]] == ["proc-000000.tar"]
    with tarfile.open(tmp_path / "proc-000000.tar") as tar:
        names = tar.getnames()
    keys = ("frames.npy", "actions.npy", "instruction.txt", "meta.json")
    assert set(names) == {f"ep{index:06d}.{key}" for index in range(6) for key in keys}
    read = list(read_episodes(shard_urls(tmp_path)))
    assert len(read) == len(episodes)
    for original, loaded in zip(episodes, read, strict=True):
        assert loaded.frames.dtype == np.uint8 and loaded.actions.dtype == np.float32
        assert np.array_equal(original.frames, loaded.frames)
        assert np.array_equal(original.actions, loaded.actions)
        assert (original.instruction, original.task, original.seed) == (
            loaded.instruction,
            loaded.task,
            loaded.seed,
        )
        assert loaded.states is None and loaded.success is None and loaded.scene.startswith("ep")


def test_small_shard_size_splits_and_checksums_catch_truncation(tmp_path):
    episodes, manifest = write_dataset(tmp_path, episodes=6, shard_size_mb=0.02)
    shards = manifest["shards"]
    assert len(shards) >= 3 and sum(s["num_samples"] for s in shards) == 6
    assert read_manifest(tmp_path) == manifest and manifest["keys"].keys() == {
        "frames.npy",
        "actions.npy",
        "instruction.txt",
        "meta.json",
    }
    for shard in shards:
        data = (tmp_path / shard["file"]).read_bytes()
        assert shard["bytes"] == len(data) and shard["sha256"] == hashlib.sha256(data).hexdigest()
    assert [e.seed for e in read_episodes(shard_urls(tmp_path))] == [e.seed for e in episodes]
    assert verify_shards(tmp_path) == []
    victim = tmp_path / shards[1]["file"]
    victim.write_bytes(victim.read_bytes()[:1000])
    assert verify_shards(tmp_path) == [shards[1]["file"]]


CACHE_CONFIG = ProceduralConfig(episodes=3, episode_length=4)


def cache(root: Path, generate, args: dict | None = None) -> Path:
    return cached_shards(
        "procedural", args or CACHE_CONFIG.model_dump(), SIZE, generate, total=3, cache_root=root
    )


def test_cached_shards_generate_once_then_reuse(tmp_path):
    calls = []

    def generate():
        calls.append(1)
        return generate_episodes(CACHE_CONFIG, SIZE)

    first, second = cache(tmp_path, generate), cache(tmp_path, generate)
    assert first == second and len(calls) == 1 and verify_shards(first) == []
    assert len(list(read_episodes(shard_urls(first)))) == 3
    other = cache(tmp_path, generate, {**CACHE_CONFIG.model_dump(), "seed": 9})
    assert other != first and len(calls) == 2


def test_cached_shards_survive_interrupted_and_racing_generations(tmp_path):
    key = cache_key("procedural", CACHE_CONFIG.model_dump(), SIZE)
    stale = tmp_path / f".procedural-{key}.deadbeef.tmp"  # left by a killed run
    stale.mkdir()
    (stale / "procedural-000000.tar").write_bytes(b"half a shard")

    def interrupted():
        yield from itertools.islice(generate_episodes(CACHE_CONFIG, SIZE), 2)
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        cache(tmp_path, interrupted)
    assert sorted(p.name for p in tmp_path.iterdir()) == [stale.name]  # no cache, no new temp dir

    def raced():  # another process finishes the same cache while this one is still generating
        cache(tmp_path, lambda: generate_episodes(CACHE_CONFIG, SIZE))
        return generate_episodes(CACHE_CONFIG, SIZE)

    target = cache(tmp_path, raced)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([stale.name, target.name])
    assert verify_shards(target) == [] and len(list(read_episodes(shard_urls(target)))) == 3
