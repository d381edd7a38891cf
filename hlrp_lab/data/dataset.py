"""From a spec's ``data`` block to shard URLs: the given pattern, or the source's shards generated once."""

import shutil
import uuid
from pathlib import Path
from typing import Any

from hlrp_lab.components.registry import DATA_SOURCES
from hlrp_lab.data.shards import cached_shards, expand_shards, read_episodes, shard_urls, write_shards
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


def check_readable(urls: list[str], data: dict) -> None:
    """Fail before training if no sample can be read, or if the frames are not ``data.image_size``."""
    skipped: list[str] = []
    first = next(read_episodes(urls, skipped), None)  # corrupt shards are skipped
    if first is None:
        where = data["shards"] or str(Path(urls[0]).parent)
        raise RunError(f"data: no readable sample in {where} ({len(urls)} shards, {len(skipped)} corrupt)")
    size = first.frames.shape[1]
    if size != data["image_size"]:
        raise SpecError(
            f"data.image_size: {data['image_size']}, but the shards hold {size}x{size} frames; "
            f"pass -s data.image_size={size}"
        )


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
