"""Frame pairs and the WebDataset loader on real shards on disk: split, pair modes, streams, damage."""

import fcntl
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from loguru import logger

from hlrp_lab.data.dataset import check_readable, data_urls
from hlrp_lab.data.episode import Episode
from hlrp_lab.data.loader import (
    WORKER_PIPE_BYTES,
    FrameData,
    HeldOutPairs,
    WidePipeContext,
    batches,
    first_per_task,
    scene_stream,
)
from hlrp_lab.data.pairs import FramePairs, batch_indices, collate, is_val_scene, make_pair
from hlrp_lab.data.shards import expand_shards, write_shards
from hlrp_lab.experiment.control import Session
from hlrp_lab.lib.errors import RunError, SpecError
from hlrp_lab.lib.util import make_run_dir
from hlrp_lab.spec.check import check_spec
from tests.conftest import tiny_spec_dict

NUM_SCENES, LENGTH = 24, 8
TRAIN = {"eval_frequency": 5, "grad_accum": 1}


def numbered_episode(first: int, length: int, scene: str | None = None) -> Episode:
    """Frame t is filled with the value first + t; action t is (first + t, -(first + t))."""
    values = np.arange(first, first + length)
    frames = np.broadcast_to(values[:, None, None, None], (length, 4, 4, 3)).astype(np.uint8)
    actions = np.stack([values[:-1], -values[:-1]], axis=1).astype(np.float32)
    return Episode(frames=frames, instruction="", task="", seed=first, actions=actions, scene=scene)


def scene_of(value: int) -> str:
    """The scene name of the numbered dataset's frame ``value``."""
    return f"scene{value // 10}"


@pytest.fixture(scope="module")
def numbered_shards(tmp_path_factory) -> Path:
    """Scenes 0..23, scene i holding frame values 10 i .. 10 i + 7, in shards of a few scenes each."""
    directory = tmp_path_factory.mktemp("numbered")
    episodes = [numbered_episode(10 * i, LENGTH, f"scene{i}") for i in range(NUM_SCENES)]
    write_shards(episodes, directory, name="num", source="test", source_args={}, shard_size_mb=0.003)
    return directory


def data_block(**change) -> dict:
    block = {
        "offsets": [1],
        "pairs": "scene",
        "pairs_per_scene": 2,
        "shuffle_buffer": 16,
        "num_workers": 0,
        "batch_size": 8,
        "val_split": 0.25,
        "val_pairs": 16,
        "max_samples": None,
        "max_episodes": None,
        "action_chunk": 1,
    }
    return {**block, **change}


def frame_values(batch: dict, key: str) -> list[int]:
    return batch[key][:, 0, 0, 0].tolist()


def val_scenes(val_split: float) -> set[str]:
    return {f"scene{i}" for i in range(NUM_SCENES) if is_val_scene(f"scene{i}", val_split)}


def test_val_split_is_a_stable_hash_near_the_fraction():
    names = [f"video{i}.mp4" for i in range(4000)]
    held = [is_val_scene(name, 0.2) for name in names]
    assert 0.18 < np.mean(held) < 0.22
    assert held == [is_val_scene(name, 0.2) for name in names]
    assert not any(is_val_scene(name, 0.0) for name in names)
    assert all(is_val_scene(name, 0.3) for name, h in zip(names, held, strict=True) if h)  # nested


def test_frame_pairs_index_every_pair_of_each_offset_with_summed_actions():
    episodes = [numbered_episode(0, 5), numbered_episode(100, 2), numbered_episode(200, 7)]
    pairs = FramePairs(episodes, offsets=[1, 3])
    assert len(pairs) == (4 + 1 + 6) + (2 + 0 + 4)
    batch = pairs.batch(torch.arange(len(pairs)))
    assert batch["frame_t"].dtype == np.uint8 and batch["frame_t"].shape == (17, 4, 4, 3)
    gaps = [
        tk - t for t, tk in zip(frame_values(batch, "frame_t"), frame_values(batch, "frame_tk"), strict=True)
    ]
    assert sorted(set(gaps)) == [1, 3] and gaps.count(3) == 6
    starts = frame_values(batch, "frame_t")
    t = next(i for i, (start, gap) in enumerate(zip(starts, gaps, strict=True)) if (start, gap) == (201, 3))
    assert batch["action"][t].tolist() == [201 + 202 + 203, -(201 + 202 + 203)]


def test_max_samples_keeps_a_fixed_subset():
    episodes = [numbered_episode(10 * i, 6) for i in range(5)]
    one, again = FramePairs(episodes, [1], max_samples=3), FramePairs(episodes, [1], max_samples=3)
    assert len(one) == 3 and one.index == again.index
    assert len(FramePairs(episodes, [1], max_samples=1000)) == 25


def test_frame_pairs_reject_offsets_no_episode_can_use():
    with pytest.raises(ValueError, match=r"data.offsets \[7\]: no episode is long enough"):
        FramePairs([numbered_episode(0, 5), numbered_episode(10, 7)], offsets=[7])


def test_batch_indices_are_a_function_of_seed_and_step():
    a = batch_indices(100, 16, seed=3, step=7)
    assert np.array_equal(a, batch_indices(100, 16, seed=3, step=7))
    assert not np.array_equal(a, batch_indices(100, 16, seed=3, step=8))
    assert not np.array_equal(a, batch_indices(100, 16, seed=4, step=7))
    assert a.shape == (16,) and 0 <= a.min() and a.max() < 100


def test_shards_are_named_by_directory_glob_or_brace_pattern(numbered_shards):
    every = expand_shards(str(numbered_shards))
    assert len(every) > 3 and Path(every[0]).name == "num-000000.tar"
    assert expand_shards(str(numbered_shards / "num-*.tar")) == every
    assert expand_shards(str(numbered_shards / "num-{000000..000002}.tar")) == every[:3]
    assert expand_shards(str(numbered_shards / "nothing-*.tar")) == []
    assert expand_shards("https://host/mw-{000000..000002}.tar")[-1] == "https://host/mw-000002.tar"


def take(stream, count: int) -> list[dict]:
    return [next(stream) for _ in range(count)]


def test_scene_stream_serves_training_scenes_deterministically(numbered_shards):
    urls, data = expand_shards(str(numbered_shards)), data_block(offsets=[1, 2])
    first = take(batches(scene_stream(urls, data, seed=5), 0), 12)
    again = take(batches(scene_stream(urls, data, seed=5), 0), 12)
    other = take(batches(scene_stream(urls, data, seed=6), 0), 12)
    assert all(np.array_equal(a["frame_t"], b["frame_t"]) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a["frame_t"], b["frame_t"]) for a, b in zip(first, other, strict=True))
    held_out = val_scenes(0.25)
    assert held_out and len(held_out) < NUM_SCENES
    seen = set()
    for batch in first:
        assert batch["frame_t"].shape == (8, 4, 4, 3) and batch["skipped_shards"] == []
        starts, ends = frame_values(batch, "frame_t"), frame_values(batch, "frame_tk")
        assert all(
            end - start in (1, 2) and scene_of(start) == scene_of(end)
            for start, end in zip(starts, ends, strict=True)
        )
        assert np.array_equal(
            batch["action"][:, 0], [sum(range(s, e)) for s, e in zip(starts, ends, strict=True)]
        )
        seen |= {scene_of(v) for v in starts}
    assert seen.isdisjoint(held_out) and len(seen) > NUM_SCENES // 2


def test_two_workers_give_a_reproducible_stream(numbered_shards):
    urls, data = expand_shards(str(numbered_shards)), data_block()
    runs = [take(batches(scene_stream(urls, data, seed=1), num_workers=2), 6) for _ in range(2)]
    assert all(np.array_equal(a["frame_t"], b["frame_t"]) for a, b in zip(*runs, strict=True))
    in_process = take(batches(scene_stream(urls, data, seed=1), num_workers=0), 6)
    assert not all(
        np.array_equal(a["frame_t"], b["frame_t"]) for a, b in zip(runs[0], in_process, strict=True)
    )


def test_ranks_draw_different_streams(numbered_shards, monkeypatch):
    urls, data = expand_shards(str(numbered_shards)), data_block()
    streams = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        streams.append(
            np.concatenate([b["frame_t"] for b in take(batches(scene_stream(urls, data, seed=1), 0), 4)])
        )
    assert not np.array_equal(*streams)


def test_frame_data_keeps_validation_scenes_apart(numbered_shards):
    data = FrameData(expand_shards(str(numbered_shards)), data_block(), TRAIN, seed=0, probe_pairs=32)
    held_out = val_scenes(0.25)
    assert (
        len(data.val["frame_t"]) == 16
        and {scene_of(v) for v in frame_values(data.val, "frame_t")} <= held_out
    )
    assert (
        len(data.probe["frame_t"]) == 32
        and not {scene_of(v) for v in frame_values(data.probe, "frame_t")} & held_out
    )
    for index in range(12):
        assert not {scene_of(v) for v in frame_values(data.train_batch(index), "frame_t")} & held_out


def test_held_out_pairs_own_their_frames_and_probes_keep_only_what_is_asked():
    """Kept pairs do not hold their episodes alive; a baseline's probe holds labels, not frames."""
    episodes = [numbered_episode(10 * i, LENGTH, f"scene{i}") for i in range(NUM_SCENES)]
    held = HeldOutPairs(episodes, data_block(), val_count=16, probe_count=32, probe_keys=("action",))
    assert len(held.val) == 16 and len(held.probe) == 32
    assert all(set(pair) == {"action"} for pair in held.probe)
    assert not any(np.shares_memory(pair["frame_t"], e.frames) for pair in held.val for e in episodes)
    assert set(held.collate_probe()) == {"action"} and held.collate_probe()["action"].shape == (32, 2)
    unlabelled = HeldOutPairs(
        episodes, data_block(), val_count=4, probe_count=8, probe_keys=("codes", "action")
    )
    assert set(unlabelled.collate_probe()) == {"action"}  # keys the pairs lack are left out


def test_without_a_split_validation_is_the_first_probe_pairs_and_reading_stops(numbered_shards):
    episodes = [numbered_episode(10 * i, LENGTH, f"scene{i}") for i in range(NUM_SCENES)]
    read = []
    consumed = (read.append(e) or e for e in episodes)
    held = HeldOutPairs(
        consumed, data_block(val_split=0.0), val_count=4, probe_count=8, probe_keys=("action",)
    )
    assert [pair["action"].tolist() for pair in held.probe[:4]] == [p["action"].tolist() for p in held.val]
    assert len(read) == 2  # 7 pairs a scene: the second scene completes both, and reading stops
    data = FrameData(
        expand_shards(str(numbered_shards)), data_block(val_split=0.0), TRAIN, seed=0, probe_pairs=8
    )
    assert np.array_equal(data.probe["frame_t"][:8], data.val["frame_t"][:8])


def test_frame_data_batches_survive_a_restart(numbered_shards):
    """A new FrameData (a resumed run) serves the batches of an uninterrupted one, at and between checkpoints."""
    urls = expand_shards(str(numbered_shards))
    whole = FrameData(urls, data_block(), TRAIN, seed=3, probe_pairs=8)
    expected = [whole.train_batch(i)["frame_t"] for i in range(13)]
    assert not np.array_equal(expected[5], expected[0])  # the stream is re-seeded at a checkpoint boundary
    for start in (5, 7, 10):
        resumed = FrameData(urls, data_block(), TRAIN, seed=3, probe_pairs=8)
        assert all(np.array_equal(resumed.train_batch(i)["frame_t"], expected[i]) for i in range(start, 13))


def test_pair_level_reads_training_scenes_into_an_index(numbered_shards):
    block = data_block(pairs="pair", offsets=[2], max_samples=10)
    data = FrameData(expand_shards(str(numbered_shards)), block, TRAIN, seed=0, probe_pairs=8)
    assert len(data.train_pairs) == 10
    batch = data.train_batch(4)
    assert np.array_equal(batch["frame_t"], data.train_batch(4)["frame_t"])
    assert (batch["frame_tk"] - batch["frame_t"] == 2).all()
    assert not {scene_of(v) for v in frame_values(batch, "frame_t")} & val_scenes(0.25)


def truncated_copy(source: Path, target: Path, victim: int) -> list[str]:
    """The numbered dataset with shard number ``victim`` cut in half; returns the shard paths."""
    target.mkdir()
    urls = []
    for url in expand_shards(str(source)):
        data = Path(url).read_bytes()
        name = target / Path(url).name
        name.write_bytes(data[: len(data) // 2] if len(urls) == victim else data)
        urls.append(str(name))
    return urls


def test_a_truncated_shard_is_skipped_named_and_counted(numbered_shards, tmp_path):
    urls = truncated_copy(numbered_shards, tmp_path / "damaged", victim=1)
    warnings: list[str] = []
    sink = logger.add(warnings.append, level="WARNING", format="{message}")
    try:
        data = FrameData(urls, data_block(), TRAIN, seed=0, probe_pairs=64)
        for index in range(30):
            data.train_batch(index)
    finally:
        logger.remove(sink)
    assert data.skipped == {urls[1]}
    assert any("skipping corrupt shard" in w and urls[1] in w for w in warnings)


def test_unreadable_data_fails_before_training_naming_the_pattern(numbered_shards, tmp_path):
    (tmp_path / "bad-000000.tar").write_bytes(b"not a tar file at all" * 10)
    (tmp_path / "bad-000001.tar").write_bytes(b"")
    pattern = str(tmp_path / "bad-*.tar")
    block = {**data_block(), "source": None, "shards": pattern, "image_size": 4}
    with pytest.raises(RunError, match=re.escape(f"no readable sample in {pattern} (2 shards, 2 corrupt)")):
        check_readable(data_urls(block), block)
    missing = {**block, "shards": str(tmp_path / "none-*.tar")}
    with pytest.raises(SpecError, match=r"data.shards: no shard matches .*none-\*\.tar"):
        data_urls(missing)
    good = {**block, "shards": str(numbered_shards), "image_size": 64}
    with pytest.raises(SpecError, match=r"data.image_size: 64, but the shards hold 4x4 frames"):
        check_readable(data_urls(good), good)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"source": None}, "give exactly one of data.source"),
        ({"shards": "x-*.tar"}, "give exactly one of data.source"),
        ({"max_samples": 4}, 'data.max_samples applies to data.pairs = "pair" only'),
        ({"pairs": "frames"}, r"data.pairs: .*'scene' or 'pair'"),
    ],
)
def test_data_block_errors_name_the_key(change, message, tmp_path):
    spec = tiny_spec_dict(tmp_path)
    spec["data"].update(change)
    with pytest.raises(SpecError, match=message):
        check_spec(spec)


def test_a_single_pair_overfits_at_pair_level(tmp_path):
    """Seed 004's debugging recipe: pair level, max_samples=1, val_split=0 drives the error towards zero."""
    spec = tiny_spec_dict(tmp_path / "cache")
    spec["data"].update(pairs="pair", max_samples=1, val_split=0.0, val_pairs=4, offsets=[3])
    spec["train"].update(max_step=150, eval_frequency=150, log_frequency=50)
    spec["optim"].update(lr=3e-3, min_lr_ratio=1.0)
    spec = check_spec(spec)
    spec["meta"].update(spec_name="overfit", run_dir=str(make_run_dir(tmp_path, "overfit", "now")))
    metrics = Session(spec).run()
    assert metrics["val_psnr"] > metrics["copy_psnr"] + 10, json.dumps(metrics)


def test_pairs_carry_the_instruction_codes_and_a_padded_action_chunk():
    base = numbered_episode(0, 5)
    codes = np.arange(8).reshape(4, 2)
    episode = Episode(base.frames, "push it", "t", 0, actions=base.actions, codes=codes)
    pair = make_pair(episode, 1, 1, chunk=3)
    assert pair["instruction"] == "push it" and pair["codes"].tolist() == [2, 3]
    assert pair["action_chunk"][:, 0].tolist() == [1, 2, 3]
    assert make_pair(episode, 3, 1, chunk=3)["action_chunk"][:, 0].tolist() == [3, 3, 3]  # the last repeated
    labelled_at_2 = Episode(base.frames, "push it", "t", 0, actions=base.actions, codes=codes[:3])
    assert "codes" not in make_pair(labelled_at_2, 3, 1)  # codes of (t, t+2) end before a (t, t+1) pair does
    batch = collate([pair, make_pair(episode, 0, 1, chunk=3)])
    assert batch["instruction"] == ["push it", "push it"] and batch["codes"].shape == (2, 2)
    assert batch["action_chunk"].shape == (2, 3, 2)


def test_max_episodes_keeps_the_first_episodes_of_each_task(numbered_shards):
    episodes = [
        Episode(e.frames, "", task, i)
        for i, (e, task) in enumerate((numbered_episode(10 * i, 4), "ab"[i % 2]) for i in range(7))
    ]
    assert [e.seed for e in first_per_task(episodes, 2)] == [0, 1, 2, 3]
    urls = expand_shards(str(numbered_shards))
    data = FrameData(
        urls, data_block(pairs="pair", max_episodes=1, val_split=0.0), TRAIN, seed=0, probe_pairs=8
    )
    assert len(data.train_episodes) == 1  # every numbered scene has the same (empty) task
    with pytest.raises(SpecError, match='data.max_episodes applies to data.pairs = "pair" only'):
        check_spec(
            {
                **tiny_spec_dict(Path("unused")),
                "data": {**tiny_spec_dict(Path("x"))["data"], "max_episodes": 2},
            }
        )


def test_worker_queues_are_wide_pipes_at_both_ends():
    queue = WidePipeContext().Queue()
    sizes = [fcntl.fcntl(end.fileno(), fcntl.F_GETPIPE_SZ) for end in (queue._reader, queue._writer)]
    assert sizes == [WORKER_PIPE_BYTES] * 2
