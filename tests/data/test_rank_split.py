"""How the global batch splits over ranks and accumulation steps, on real WebDataset shards on disk: at pair
level every rank's micro-batches are disjoint parts of the one-rank global batch; at scene level each rank reads
its own shards."""

from pathlib import Path

import numpy as np
import pytest

from hlrp_lab.data.episode import Episode
from hlrp_lab.data.loader import FrameData
from hlrp_lab.data.pairs import scene_rank
from hlrp_lab.data.shards import expand_shards, read_episodes, write_shards
from hlrp_lab.lib.batch import micro_batch
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.world import World

NUM_SCENES, LENGTH, BATCH = 24, 8, 8
STEPS = 4
KEYS = ("frame_t", "frame_tk", "action")


def numbered_episode(first: int, scene: str) -> Episode:
    """Frame t is filled with the value first + t (so a pair is known by its two frames); action t is
    (first + t, -(first + t))."""
    values = np.arange(first, first + LENGTH)
    frames = np.broadcast_to(values[:, None, None, None], (LENGTH, 4, 4, 3)).astype(np.uint8)
    actions = np.stack([values[:-1], -values[:-1]], axis=1).astype(np.float32)
    return Episode(frames=frames, instruction="", task="", seed=first, actions=actions, scene=scene)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    """Scenes 0..23 (scene i holds the frame values 10 i .. 10 i + 7), a few scenes per shard."""
    directory = tmp_path_factory.mktemp("numbered")
    episodes = [numbered_episode(10 * i, f"scene{i}") for i in range(NUM_SCENES)]
    write_shards(episodes, directory, name="num", source="test", source_args={}, shard_size_mb=0.003)
    urls = expand_shards(str(directory))
    assert len(urls) >= 4
    return urls


def data_block(**change) -> dict:
    block = {
        "offsets": [1, 2],
        "pairs": "pair",
        "pairs_per_scene": 2,
        "shuffle_buffer": 8,
        "num_workers": 0,
        "batch_size": BATCH,
        "val_split": 0.25,
        "val_pairs": 12,
        "max_samples": None,
        "max_episodes": None,
        "action_chunk": 1,
    }
    return {**block, **change}


def frame_data(
    urls: list[str], world: World, grad_accum: int = 1, eval_frequency: int = 3, **change
) -> FrameData:
    train = {"eval_frequency": eval_frequency, "grad_accum": grad_accum}
    return FrameData(urls, data_block(**change), train, seed=11, probe_pairs=8, world=world)


def pair_keys(batch: dict) -> list[tuple[int, int]]:
    """Each pair as (value of frame t, value of frame t+k): unique over the numbered dataset."""
    return list(
        zip(batch["frame_t"][:, 0, 0, 0].tolist(), batch["frame_tk"][:, 0, 0, 0].tolist(), strict=True)
    )


def concatenated(parts: list[dict]) -> dict:
    return {key: np.concatenate([part[key] for part in parts]) for key in KEYS}


@pytest.fixture(scope="module")
def global_batches(shards) -> list[dict]:
    """The global batch of each step, as one rank without accumulation draws it."""
    one = frame_data(shards, World())
    batches = [one.train_batch(step) for step in range(STEPS)]
    assert all(len(batch["frame_t"]) == BATCH for batch in batches)
    assert len({tuple(pair_keys(batch)) for batch in batches}) == STEPS  # each step its own batch
    return batches


@pytest.mark.parametrize(("size", "grad_accum"), [(1, 2), (2, 1), (2, 2), (4, 1), (4, 2)])
def test_pair_level_micro_batches_are_the_parts_of_the_global_batch(shards, global_batches, size, grad_accum):
    """Micro-batch m of rank r is part m x size + r of the step's global batch: all ranks' micro-batches, in
    that order, are the one-rank global batch, each pair in exactly one part."""
    ranks = [frame_data(shards, World(rank=r, size=size), grad_accum) for r in range(size)]
    per_part = BATCH // (size * grad_accum)
    assert all(data.micro_batch == per_part for data in ranks)
    for step, expected in enumerate(global_batches):
        parts = [
            ranks[rank].train_batch(step * grad_accum + micro)
            for micro in range(grad_accum)
            for rank in range(size)
        ]
        assert [len(part["frame_t"]) for part in parts] == [per_part] * (size * grad_accum)
        whole = concatenated(parts)
        for key in KEYS:
            assert np.array_equal(whole[key], expected[key]), (step, key)


def test_pair_level_batches_are_the_same_for_the_same_index_on_a_rank(shards):
    data = frame_data(shards, World(rank=1, size=2), grad_accum=2)
    first = [pair_keys(data.train_batch(i)) for i in range(6)]
    assert [pair_keys(data.train_batch(i)) for i in reversed(range(6))] == first[::-1]
    assert len({tuple(keys) for keys in first}) > 1


def test_held_out_and_probe_pairs_are_the_same_on_every_rank(shards):
    worlds = [World(), World(rank=0, size=2), World(rank=1, size=2), World(rank=3, size=4)]
    for pairs in ("pair", "scene"):
        datas = [frame_data(shards, world, pairs=pairs) for world in worlds]
        reference = datas[0]
        assert len(reference.val["frame_t"]) == 12 and len(reference.probe["frame_t"]) == 8
        for data in datas[1:]:
            for key in KEYS:
                assert np.array_equal(data.val[key], reference.val[key]), (pairs, key)
                assert np.array_equal(data.probe[key], reference.probe[key]), (pairs, key)


@pytest.mark.parametrize("pairs", ["pair", "scene"])
def test_a_batch_that_does_not_split_over_the_ranks_is_a_spec_error(shards, pairs):
    with pytest.raises(
        SpecError, match=r"^data\.batch_size: 6 does not split over 4 rank\(s\) x train\.grad_accum 1"
    ):
        frame_data(shards, World(rank=0, size=4), batch_size=6, pairs=pairs)
    with pytest.raises(SpecError, match=r"use a multiple of 4, e\.g\. -s data\.batch_size=8$"):
        frame_data(shards, World(rank=1, size=2), grad_accum=2, batch_size=10, pairs=pairs)


@pytest.mark.parametrize(
    ("batch_size", "grad_accum", "ranks", "expected"),
    [(8, 1, 1, 8), (8, 2, 2, 2), (32, 1, 4, 8), (24, 3, 2, 4)],
)
def test_micro_batch_divides_the_global_batch(batch_size, grad_accum, ranks, expected):
    assert micro_batch(batch_size, grad_accum, ranks) == expected


@pytest.mark.parametrize(
    ("batch_size", "grad_accum", "ranks", "fit"),
    [(30, 1, 4, 28), (2, 1, 4, 4), (7, 2, 1, 6), (12, 2, 4, 8)],
)
def test_micro_batch_errors_name_the_key_and_a_batch_that_splits(batch_size, grad_accum, ranks, fit):
    with pytest.raises(SpecError) as err:
        micro_batch(batch_size, grad_accum, ranks)
    message = str(err.value)
    assert message.startswith(f"data.batch_size: {batch_size} does not split over {ranks} rank(s)")
    assert message.endswith(f"-s data.batch_size={fit}")
    assert micro_batch(fit, grad_accum, ranks) == fit // (grad_accum * ranks)  # the advice is a valid batch


def served_scenes(data: FrameData, count: int) -> set[str]:
    """The scenes of the first ``count`` training batches of ``data``."""
    batches = [data.train_batch(i) for i in range(count)]
    assert all(len(batch["frame_t"]) == data.micro_batch for batch in batches)
    return {f"scene{v // 10}" for batch in batches for v in batch["frame_t"][:, 0, 0, 0].tolist()}


@pytest.mark.parametrize("size", [2, 3])
def test_scene_level_ranks_read_only_their_own_shards(shards, size):
    """With at least as many shards as ranks, rank r streams every size-th shard from shard r: the ranks' shards
    are disjoint and together all of them."""
    scenes_of = {url: {e.scene for e in read_episodes(url)} for url in shards}
    shares = [shards[rank::size] for rank in range(size)]
    assert sorted(url for share in shares for url in share) == sorted(shards)
    seen = []
    for rank, share in enumerate(shares):
        data = frame_data(shards, World(rank=rank, size=size), batch_size=12, pairs="scene", val_split=0.0)
        own = set().union(*(scenes_of[url] for url in share))
        scenes = served_scenes(data, 6)
        assert scenes and scenes <= own, (rank, scenes - own)
        seen.append(scenes)
    assert all(a.isdisjoint(b) for i, a in enumerate(seen) for b in seen[i + 1 :])


@pytest.fixture(scope="module")
def one_shard(tmp_path_factory) -> list[str]:
    """All 24 numbered scenes in a single shard."""
    directory = tmp_path_factory.mktemp("one_shard")
    episodes = [numbered_episode(10 * i, f"scene{i}") for i in range(NUM_SCENES)]
    write_shards(episodes, directory, name="one", source="test", source_args={})
    urls = expand_shards(str(directory))
    assert len(urls) == 1
    return urls


@pytest.mark.parametrize("size", [2, 3])
def test_fewer_shards_than_ranks_share_the_scenes_instead(one_shard, size):
    """One shard, several ranks: every rank reads it and keeps its own scenes (``scene_rank``): the ranks'
    scenes are disjoint and together every training scene."""
    every = {f"scene{i}" for i in range(NUM_SCENES)}
    seen = []
    for rank in range(size):
        world = World(rank=rank, size=size)
        # one stream (no restart at a checkpoint) of 16 batches of 12 / size pairs: over two passes through
        # this rank's ~24 / size scenes of 2 pairs each
        data = frame_data(one_shard, world, eval_frequency=100, batch_size=12, pairs="scene", val_split=0.0)
        scenes = served_scenes(data, 16)
        assert scenes and all(scene_rank(scene, size) == rank for scene in scenes), rank
        seen.append(scenes)
    assert all(a.isdisjoint(b) for i, a in enumerate(seen) for b in seen[i + 1 :])
    assert set().union(*seen) == every


def test_numbered_scenes_are_spread_over_several_shards(shards):
    """The dataset the tests above rely on: every scene in exactly one shard, more shards than ranks tested."""
    scenes = [e.scene for url in shards for e in read_episodes(url)]
    assert sorted(scenes) == sorted(f"scene{i}" for i in range(NUM_SCENES))
    assert all(Path(url).is_file() for url in shards)
