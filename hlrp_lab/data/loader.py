"""Frame-pair batches for training and the fixed held-out pairs, read from WebDataset shards.

Scene level streams: resampled shards (an infinite stream; each rank resamples its own share of the shards, or
of the scenes when there are fewer shards than ranks, and each DataLoader worker draws its own sequence from a
seed made of (seed, rank, worker)), corrupt shards
skipped, validation scenes dropped, ``pairs_per_scene`` pairs per scene, a shuffle buffer, batches. Pair
level reads the training scenes once into memory and indexes every pair.

``data.batch_size`` is the global batch of an optimizer step: each of the ``ranks x grad_accum`` micro-batches
of a step holds ``batch_size / (ranks x grad_accum)`` pairs. At pair level they are the disjoint parts of the
step's global batch (the same pairs on any number of ranks); the held-out pairs are the same on every rank.

Exact resume: the training stream restarts, re-seeded, every ``eval_frequency`` optimizer steps (where the
loop writes its checkpoints), so a run resumed from a checkpoint sees the batches an uninterrupted run saw.
"""

import fcntl
import random
import sys
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.context import BaseContext, ForkContext
from multiprocessing.queues import Queue
from typing import Any

import numpy as np
import webdataset as wds
from loguru import logger

from hlrp_lab.data.episode import Episode
from hlrp_lab.data.pairs import (
    FramePairs,
    batch_indices,
    collate,
    is_val_scene,
    sample_pairs,
    scene_rank,
    scene_rng,
)
from hlrp_lab.data.shards import decode_episode, raw_samples, read_episodes, sample_scene
from hlrp_lab.lib.batch import micro_batch
from hlrp_lab.lib.errors import RunError
from hlrp_lab.lib.world import World

VAL_PAIRS_PER_SCENE = 8
MAX_BARREN_INPUTS = 10_000  # stream inputs in a row without a single pair: the data cannot be used
WORKER_PIPE_BYTES = 1 << 20  # Linux's default limit for an unprivileged pipe
Sample = dict[str, Any]


def stream_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([p % 2**63 for p in parts]).generate_state(1, dtype=np.uint64)[0])


def train_scene_pairs(
    data: dict, seed: int, share: World | None = None, label_fraction: float = 0.0
) -> Callable[[Iterable[Sample]], Iterator[Sample]]:
    """Pipeline stage: raw samples -> pairs of training scenes (only the scenes of rank ``share.rank`` when
    the ranks share shards; marked labelled or not with a ``label_fraction``); skipped-shard markers pass
    through."""

    def stage(samples: Iterable[Sample]) -> Iterator[Sample]:
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        rng = random.Random(stream_seed(seed, rank, worker))
        barren = 0
        for sample in samples:
            if "__skipped__" in sample:
                yield sample
                barren += 1
                continue
            pairs = []
            if share is None or scene_rank(sample_scene(sample), share.size) == share.rank:
                episode = decode_episode(sample)
                if not is_val_scene(episode.scene, data["val_split"]):
                    chunk = action_chunk(data)
                    count = data["pairs_per_scene"]
                    pairs = sample_pairs(episode, data["offsets"], count, rng, chunk, label_fraction)
            barren = 0 if pairs else barren + 1
            if barren > MAX_BARREN_INPUTS:
                ours = (
                    ""
                    if share is None
                    else f" for rank {share.rank} (the {share.size} ranks share the scenes)"
                )
                raise RunError(
                    f"data: {barren} shards/scenes in a row gave no training pair{ours}; check data.offsets"
                    + ("" if share is None else ", or add scenes or shards")
                )
            yield from pairs

    return stage


def batch_pairs(batch_size: int) -> Callable[[Iterable[Sample]], Iterator[Sample]]:
    """Pipeline stage: pairs -> collated batches carrying the shards skipped since the last batch."""

    def stage(items: Iterable[Sample]) -> Iterator[Sample]:
        pairs, skipped = [], []
        for item in items:
            if "__skipped__" in item:
                skipped.append(item["__skipped__"])
                continue
            pairs.append(item)
            if len(pairs) == batch_size:
                yield {**collate(pairs), "skipped_shards": skipped}
                pairs, skipped = [], []

    return stage


def scene_stream(
    urls: list[str],
    data: dict,
    seed: int,
    batch_size: int | None = None,
    world: World | None = None,
    label_fraction: float = 0.0,
) -> wds.DataPipeline:
    """The infinite stream of training batches at scene level, deterministic in ``seed``, of ``batch_size``
    pairs (default ``data.batch_size``): of this rank's share of the data when ``world`` has several ranks
    (every ``world.size``-th shard, or every rank's own scenes when there are fewer shards than ranks)."""
    share = None
    if world is not None and world.distributed:
        if len(urls) >= world.size:
            urls = urls[world.rank :: world.size]
        else:
            share = world
    return wds.DataPipeline(
        wds.ResampledShards(urls, seed=seed, deterministic=True),
        raw_samples,
        train_scene_pairs(data, seed, share, label_fraction),
        wds.shuffle(data["shuffle_buffer"], initial=data["shuffle_buffer"], seed=seed),
        batch_pairs(batch_size or data["batch_size"]),
    )


def keep_numpy(batch: Sample) -> Sample:
    """DataLoader collate_fn: pass the batch through as numpy (see ``pairs.collate``)."""
    return batch


def action_chunk(data: dict) -> int:
    """Actions per pair's target: ``data.action_chunk`` where the stage declares it (finetune), else 1."""
    return data.get("action_chunk", 1)


class WidePipeContext(ForkContext):
    """DataLoader workers send their batches through a multiprocessing Queue, that is a pipe. At the default
    64 KB a batch of frames (800 KB at 64x64, batch 32) crosses it in a dozen wake-ups of both ends; a 1 MB
    pipe takes it in one (1.6x the batches/s with 2 workers on 2 cores; benchmarks/loader_throughput.py)."""

    def Queue(self, maxsize: int = 0) -> Queue:  # the multiprocessing API names it so
        queue = super().Queue(maxsize)
        try:  # the size belongs to the pipe: either end sets it
            fcntl.fcntl(queue._writer.fileno(), fcntl.F_SETPIPE_SZ, WORKER_PIPE_BYTES)
        except OSError:  # over this user's pipe quota: keep the default size
            pass
        return queue


def worker_context() -> BaseContext | None:
    """The multiprocessing context for DataLoader workers: wide pipes on Linux, else the default."""
    return WidePipeContext() if sys.platform == "linux" else None


def batches(pipeline: wds.DataPipeline, num_workers: int) -> Iterator[Sample]:
    """Iterate ``pipeline`` in this process or through DataLoader workers."""
    if num_workers == 0:
        return iter(pipeline)
    loader = wds.WebLoader(
        pipeline,
        batch_size=None,
        num_workers=num_workers,
        prefetch_factor=4,
        collate_fn=keep_numpy,
        multiprocessing_context=worker_context(),
    )
    return iter(loader)


def first_per_task(episodes: list[Episode], count: int) -> list[Episode]:
    """The first ``count`` episodes of each task, in order."""
    seen: dict[str, int] = {}
    kept = []
    for episode in episodes:
        seen[episode.task] = seen.get(episode.task, 0) + 1
        if seen[episode.task] <= count:
            kept.append(episode)
    return kept


class HeldOutPairs:
    """Fixed pairs read once in shard order: validation pairs, and training pairs for a probe or a baseline.

    Kept pairs own their frames (the episodes they come from are freed); with ``probe_keys`` the probe pairs
    keep only those keys (a baseline needs the labels, not the frames). Without a validation split the
    validation pairs are the first probe pairs, frames included.
    """

    def __init__(
        self,
        episodes: Iterable[Episode],
        data: dict,
        val_count: int,
        probe_count: int,
        probe_keys: tuple[str, ...] | None = None,
    ):
        self.val: list[Sample] = []
        self.probe: list[Sample] = []
        self.probe_keys = probe_keys
        self.num_train_scenes = 0
        for episode in episodes:
            held_out = is_val_scene(episode.scene, data["val_split"])
            self.num_train_scenes += not held_out
            target, count = (self.val, val_count) if held_out else (self.probe, probe_count)
            if len(target) < count:
                per_scene = min(VAL_PAIRS_PER_SCENE, count - len(target))
                pairs = sample_pairs(
                    episode, data["offsets"], per_scene, scene_rng(episode.scene), action_chunk(data)
                )
                if held_out:
                    self.val.extend(map(owned, pairs))
                    continue
                if data["val_split"] == 0:
                    self.val.extend(owned(pair) for pair in pairs[: val_count - len(self.val)])
                self.probe.extend(owned(pair, probe_keys) for pair in pairs)
            if len(self.val) >= val_count and len(self.probe) >= probe_count:
                break

    def collate_probe(self) -> Sample:
        """The probe pairs as one batch (of those ``probe_keys`` every pair has, when given)."""
        if self.probe_keys is None:
            return collate(self.probe)
        shared = [key for key in self.probe_keys if all(key in pair for pair in self.probe)]
        return {key: np.stack([pair[key] for pair in self.probe]) for key in shared}


def owned(pair: Sample, keys: tuple[str, ...] | None = None) -> Sample:
    """``pair`` (only those ``keys`` it has, when given) with copies of its arrays instead of views of its
    episode."""
    kept = pair if keys is None else {key: pair[key] for key in keys if key in pair}
    return {key: value.copy() if isinstance(value, np.ndarray) else value for key, value in kept.items()}


class FrameData:
    """What a stage trains and evaluates on: ``train_batch(index)``, the held-out pairs, skipped shards.

    ``probe`` holds ``probe_pairs`` training pairs for a stage's probe or baseline, only ``probe_keys`` of
    them when given. Training batches are this rank's (``world``, default: the current one) micro-batches of
    ``micro_batch`` pairs.
    """

    def __init__(
        self,
        urls: list[str],
        data: dict,
        train: dict,
        seed: int,
        probe_pairs: int,
        probe_keys: tuple[str, ...] | None = None,
        world: World | None = None,
        label_fraction: float = 0.0,
    ):
        self.urls, self.data, self.seed = urls, data, seed
        self.label_fraction = label_fraction  # training pairs say whether they are labelled (pairs.py)
        self.world = world or World.current()
        self.grad_accum = train["grad_accum"]
        self.micro_batch = micro_batch(data["batch_size"], self.grad_accum, self.world.size)
        self.segment = train["eval_frequency"] * train["grad_accum"]  # micro-batches between checkpoints
        self.skipped: set[str] = set()
        self.train_episodes: list[Episode] = []  # pair level: the training episodes held in memory
        skipped: list[str] = []
        val_pairs = data["val_pairs"]
        if data["pairs"] == "pair":
            episodes = list(read_episodes(urls, skipped))
            self.train_pairs = self.index_train_pairs(episodes)
            no_split = data["val_split"] == 0
            held = HeldOutPairs(episodes, data, 0 if no_split else val_pairs, probe_pairs, probe_keys)
            if no_split:  # the training pairs themselves (seed 004's overfitting recipe)
                held.val = [self.train_pairs.pair(i) for i in range(min(len(self.train_pairs), val_pairs))]
        else:
            held = HeldOutPairs(read_episodes(urls, skipped), data, val_pairs, probe_pairs, probe_keys)
            if held.num_train_scenes == 0:
                raise RunError("data: every scene read is held out for validation; lower data.val_split")
        self.note_skipped(skipped)
        if not held.val:
            raise RunError("data: no validation pairs; raise data.val_split or add scenes")
        if not held.probe:
            raise RunError("data: no training scene is longer than data.offsets; lower them or add scenes")
        self.val, self.probe = collate(held.val), held.collate_probe()
        self.stream: Iterator[Sample] | None = None
        self.next_index = -1

    def index_train_pairs(self, episodes: list[Episode]) -> FramePairs:
        train = [e for e in episodes if not is_val_scene(e.scene, self.data["val_split"])]
        if self.data["max_episodes"] is not None:
            train = first_per_task(train, self.data["max_episodes"])
        if not train:
            raise RunError("data: no training scenes; lower data.val_split or add scenes")
        pairs = FramePairs(
            train,
            self.data["offsets"],
            self.data["max_samples"],
            chunk=action_chunk(self.data),
            label_fraction=self.label_fraction,
        )
        logger.info(f"data: {len(pairs)} training pairs from {len(train)} scenes (pair level)")
        self.train_episodes = train
        return pairs

    def note_skipped(self, urls: list[str]) -> None:
        self.skipped.update(urls)

    def train_batch(self, index: int) -> Sample:
        """This rank's micro-batch number ``index`` (step x grad_accum + micro; CPU, uint8 frames); the same
        index gives the same batch."""
        if self.data["pairs"] == "pair":
            step, micro = divmod(index, self.grad_accum)
            indices = batch_indices(len(self.train_pairs), self.data["batch_size"], self.seed, step)
            part = micro * self.world.size + self.world.rank
            return self.train_pairs.batch(indices[part * self.micro_batch : (part + 1) * self.micro_batch])
        segment, position = divmod(index, self.segment)
        if self.stream is None or index != self.next_index or position == 0:
            seed = stream_seed(self.seed, segment)
            stream = scene_stream(
                self.urls, self.data, seed, self.micro_batch, self.world, self.label_fraction
            )
            self.stream = batches(stream, self.data["num_workers"])
            for _ in range(position):  # only after a resume between checkpoints
                next(self.stream)
        batch = next(self.stream)
        self.next_index = index + 1
        self.note_skipped(batch.pop("skipped_shards"))
        return batch
