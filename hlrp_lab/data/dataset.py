"""From a spec's ``data`` block to shard URLs: the given pattern, or the source's shards generated once."""

import math
import shutil
import uuid
from pathlib import Path
from typing import Any

from hlrp_lab.data.pairs import scene_position
from hlrp_lab.data.shards import (
    REMOTE_PREFIXES,
    cached_shards,
    expand_shards,
    missing_shards,
    read_episodes,
    scene_lengths,
    shard_urls,
    write_shards,
)
from hlrp_lab.data.sources import DATA_SOURCES
from hlrp_lab.lib.errors import RunError, SpecError


def source_shards(data: dict) -> Path:
    """The shard directory of ``data.source``, written under ``data.cache_dir`` on first use."""
    block = data["source"]
    source = DATA_SOURCES.build(block, "data.source", image_size=data["image_size"])
    args = source.config.model_dump()
    return cached_shards(
        block["name"],
        args,
        data["image_size"],
        generate=source.episodes,
        total=len(source),
        cache_root=Path(data["cache_dir"]),
        extra=getattr(source, "manifest_extra", None),
    )


def data_urls(data: dict) -> list[str]:
    """The shard URLs of a data block (generating a source's shards on first use)."""
    if data["source"] is not None:
        return shard_urls(source_shards(data))
    urls = expand_shards(data["shards"])
    if not urls:
        raise SpecError(f"data.shards: no shard matches {data['shards']!r}")
    return urls


def check_data(urls: list[str], data: dict) -> None:
    """What a stage's ``prepare_data`` checks of every data block before the run directory exists: a sample
    is readable, its frames are ``data.image_size``, and ``data.val_split`` leaves scenes long enough for a
    pair on both sides of the split."""
    check_readable(urls, data)
    check_split(urls, data)


def data_place(urls: list[str], data: dict) -> str:
    """How an error names the data: the ``data.shards`` pattern, else the shards' folder."""
    return data["shards"] or str(Path(urls[0]).parent)


def check_readable(urls: list[str], data: dict) -> None:
    """Fail before training if no sample can be read, or if the frames are not ``data.image_size``."""
    skipped: list[str] = []
    first = next(read_episodes(urls, skipped), None)  # corrupt and missing shards are skipped
    if first is None:
        missing = len(missing_shards(skipped))
        damage = f"{len(skipped) - missing} corrupt" + (f", {missing} missing" if missing else "")
        raise RunError(f"data: no readable sample in {data_place(urls, data)} ({len(urls)} shards, {damage})")
    size = first.frames.shape[1]
    if size != data["image_size"]:
        raise SpecError(
            f"data.image_size: {data['image_size']}, but the shards hold {size}x{size} frames; "
            f"pass -s data.image_size={size}"
        )


def check_split(urls: list[str], data: dict) -> None:
    """SpecError unless ``data.val_split`` holds out at least one scene with a pair at ``data.offsets`` and
    keeps one for training, naming a split that would (scenes are split by a hash of their name, see
    ``pairs.is_val_scene``). Reads scene names and episode lengths only; remote shards are not checked, and
    ``val_split`` 0 (evaluate on training pairs) needs no split."""
    split = data["val_split"]
    if split == 0 or any(url.startswith(REMOTE_PREFIXES) for url in urls):
        return
    shortest = min(data["offsets"])
    usable = sorted(scene_position(s) for s, n in scene_lengths(urls).items() if n > shortest)
    if not usable:
        raise SpecError(
            f"data.offsets: {data['offsets']}, but no scene of {data_place(urls, data)} has more than "
            f"{shortest} frames; lower data.offsets or use longer episodes"
        )
    held_out = sum(position < split for position in usable)
    if 0 < held_out < len(usable):
        return
    scenes = f"{len(usable)} scenes with a pair at data.offsets {data['offsets']}"
    if len(usable) == 1:
        raise SpecError(
            f"data.val_split: {data_place(urls, data)} has 1 scene with a pair at data.offsets "
            f"{data['offsets']}, and validation needs a scene of its own (clips of one video share its "
            "scene): add another video or episode, or pass -s data.val_split=0 to evaluate on training pairs"
        )
    side, fix = ("none", round_split(usable, True)) if held_out == 0 else ("all", round_split(usable, False))
    raise SpecError(
        f"data.val_split: {split} holds out {side} of the {scenes} in {data_place(urls, data)} (split by a "
        f"hash of the scene name); pass -s data.val_split={fix:g}, which holds out "
        f"{sum(position < fix for position in usable)}, or -s data.val_split=0 to evaluate on training pairs"
    )


def round_split(positions: list[float], hold_out_first: bool) -> float:
    """The split with the fewest decimals in (first, last] of the sorted scene ``positions``: just above the
    first (holding out one scene) when ``hold_out_first``, else at most the last (keeping it for training)."""
    low, high = positions[0], positions[-1]
    for digits in range(1, 17):
        scale = 10**digits
        split = math.floor(low * scale + 1) / scale if hold_out_first else math.floor(high * scale) / scale
        if low < split <= high:
            return split
    return high


def write_dataset(
    block: dict[str, Any], out_dir: Path, *, image_size: int, name: str, shard_size_mb: float, overwrite: bool
) -> tuple[dict, Any]:
    """Write the shards of source ``block`` to ``out_dir`` (built beside it, then renamed into place).

    Returns the manifest and the source (which may count what it skipped). An existing non-empty ``out_dir``
    is replaced only with ``overwrite``; a source that yields no episode writes nothing and raises. A source
    with a ``manifest_extra`` dict adds its keys to the manifest (the label source records its LAQ run).
    """
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise SpecError(f"{out_dir} exists and is not empty; pass --overwrite or choose another directory")
    source = DATA_SOURCES.build(block, f"data {block['name']}", image_size=image_size)
    tmp = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        manifest = write_shards(
            source.episodes(),
            tmp,
            name=name,
            source=block["name"],
            source_args=source.config.model_dump(),
            total=len(source),
            shard_size_mb=shard_size_mb,
            extra=getattr(source, "manifest_extra", None),
        )
        if manifest["num_samples"] == 0:
            raise RunError(f"data {block['name']}: no episode could be read; nothing written to {out_dir}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return manifest, source
