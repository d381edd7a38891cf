"""WebDataset shards: one sample per episode, size-bounded TAR files, and a manifest.

A sample holds ``frames.npy`` (uint8 T,H,W,3), ``actions.npy`` (float32 T-1,A), ``instruction.txt`` and
``meta.json`` ({"task", "seed", "episode"}) under the key ``ep{index:06d}``. One sample per episode keeps the
frames of a scene together, so frame pairs at any offset are cut after reading. ``manifest.json`` is written
last and lists every shard with its size and sha256.
"""

import hashlib
import json
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import webdataset as wds
from loguru import logger
from tqdm import tqdm

from hlrp_lab.data.episode import Episode

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KEYS = {
    "frames.npy": "uint8 (T, H, W, 3)",
    "actions.npy": "float32 (T-1, A)",
    "instruction.txt": "utf-8 text",
    "meta.json": '{"task": str, "seed": int, "episode": int}',
}


def episode_sample(index: int, episode: Episode) -> dict[str, Any]:
    """The WebDataset sample of episode number ``index``."""
    meta = {"task": episode.task, "seed": episode.seed, "episode": index}
    return {
        "__key__": f"ep{index:06d}",
        "frames.npy": episode.frames,
        "actions.npy": episode.actions,
        "instruction.txt": episode.instruction,
        "meta.json": meta,
    }


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_shards(
    episodes: Iterable[Episode],
    out_dir: Path,
    *,
    name: str,
    source: str,
    source_args: dict,
    total: int | None = None,
    shard_size_mb: float = 64.0,
) -> dict:
    """Write ``{name}-{index:06d}.tar`` shards, then ``manifest.json``; returns the manifest.

    A shard is closed once it holds ``shard_size_mb`` or more, so it exceeds that by less than one episode.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: Counter[str] = Counter()
    num_frames, image_size = 0, None
    pattern = str(out_dir / f"{name}-%06d.tar")
    with wds.ShardWriter(pattern, maxsize=int(shard_size_mb * 1e6), maxcount=10**9, verbose=0) as writer:
        for index, episode in enumerate(tqdm(episodes, total=total, desc="writing shards", unit="episode")):
            writer.write(episode_sample(index, episode))
            counts[Path(writer.fname).name] += 1
            num_frames += len(episode.frames)
            image_size = episode.frames.shape[1]
    shards = [shard_entry(out_dir / file, count) for file, count in counts.items()]
    manifest = {
        "format": FORMAT_VERSION,
        "name": name,
        "source": source,
        "source_args": source_args,
        "image_size": image_size,
        "num_episodes": sum(counts.values()),
        "num_frames": num_frames,
        "keys": KEYS,
        "shards": shards,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def shard_entry(path: Path, num_episodes: int) -> dict:
    """A shard's line in the manifest."""
    return {
        "file": path.name,
        "num_episodes": num_episodes,
        "bytes": path.stat().st_size,
        "sha256": sha256(path),
    }


def read_manifest(directory: Path) -> dict:
    return json.loads((directory / MANIFEST).read_text())


def verify_shards(directory: Path) -> list[str]:
    """Names of the shards whose size or sha256 differs from the manifest (or that are missing)."""
    bad = []
    for shard in read_manifest(directory)["shards"]:
        path = directory / shard["file"]
        if not path.is_file() or path.stat().st_size != shard["bytes"] or sha256(path) != shard["sha256"]:
            bad.append(shard["file"])
    return bad


def shard_urls(directory: Path) -> list[str]:
    """The shard paths of ``directory``, in manifest order."""
    return [str(directory / shard["file"]) for shard in read_manifest(directory)["shards"]]


def read_episodes(urls: str | list[str]) -> Iterator[Episode]:
    """The episodes of the shards at ``urls``, in order, decoded by ``webdataset``."""
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode()
    for sample in dataset:
        meta = sample["meta.json"]
        yield Episode(
            frames=sample["frames.npy"],
            actions=sample["actions.npy"],
            instruction=sample["instruction.txt"],
            task=meta["task"],
            seed=meta["seed"],
        )


def cache_key(source: str, source_args: dict, image_size: int) -> str:
    """A short hash of everything that determines the shards' content."""
    text = json.dumps([FORMAT_VERSION, source, source_args, image_size], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cached_shards(
    source: str,
    source_args: dict,
    image_size: int,
    generate: Callable[[], Iterable[Episode]],
    total: int,
    cache_root: Path = Path("data/cache"),
) -> Path:
    """``cache_root/{source}-{hash}``: generated once (into a temporary directory renamed into place), then reused."""
    target = cache_root / f"{source}-{cache_key(source, source_args, image_size)}"
    if (target / MANIFEST).is_file():
        logger.info(f"reusing cached shards at {target}")
        return target
    tmp = cache_root / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    logger.info(f"generating {total} {source} episodes into {target}")
    try:
        write_shards(generate(), tmp, name=source, source=source, source_args=source_args, total=total)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish(tmp, target)
    return target


def publish(tmp: Path, target: Path) -> None:
    """Rename the finished ``tmp`` to ``target``; if another process got there first, keep its copy."""
    try:
        os.rename(tmp, target)
    except OSError:
        if (target / MANIFEST).is_file():
            logger.info(f"another process wrote {target} first; using it")
            shutil.rmtree(tmp)
            return
        shutil.rmtree(target)  # a directory without a manifest is not ours to reuse: replace it
        os.rename(tmp, target)
