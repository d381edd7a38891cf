"""From a spec's ``data`` block to episodes: generate (or reuse) the source's shards, read them back."""

from pathlib import Path

from hlrp_lab.components.registry import DATA_SOURCES
from hlrp_lab.data.episode import Episode
from hlrp_lab.data.shards import cached_shards, read_episodes, shard_urls


def prepare_shards(data: dict) -> Path:
    """The shard directory of ``data.source``, written under ``data.cache_dir`` on first use."""
    source = DATA_SOURCES.build(data["source"], "data.source", image_size=data["image_size"])
    args = {k: v for k, v in data["source"].items() if k != "name"}
    return cached_shards(
        data["source"]["name"],
        args,
        data["image_size"],
        generate=source.episodes,
        total=len(source),
        cache_root=Path(data["cache_dir"]),
    )


def load_episodes(data: dict) -> list[Episode]:
    """Every episode of the source, read from its WebDataset shards."""
    return list(read_episodes(shard_urls(prepare_shards(data))))
