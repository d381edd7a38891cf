"""Latent-action labels: the episodes of some shards with the codes an LAQ run gives each pair (t, t + k).

Written once by ``hlrp-lab data label`` (or named as a spec's ``data.source``, then generated on first use and
cached); the manifest records the LAQ run, its weights, the offset, the codebook, and the manifest of the
shards that were labelled (``parent``), so a later stage knows where its frames came from (a Meta-World
camera, say).
"""

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from hlrp_lab.data.episode import Episode
from hlrp_lab.data.shards import MANIFEST, expand_shards, read_episodes, read_manifest, sha256
from hlrp_lab.data.sources import DATA_SOURCES
from hlrp_lab.lib.device import pick_device
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.runs import resolve_reference
from hlrp_lab.stages.config import LabelConfig, LAQConfig
from hlrp_lab.stages.laq import label_episode, load_laq


@DATA_SOURCES.register_as("label")
class LabelSource:
    """Episodes of existing shards with the latent action codes of an LAQ run."""

    Config = LabelConfig

    def __init__(self, config: LabelConfig, *, image_size: int):
        self.reference = resolve_reference(config.laq, "data.source.laq")
        laq = self.reference.spec()
        if laq["stage"] != "laq":
            raise SpecError(f"data.source.laq: {self.reference.run_dir} is a {laq['stage']!r} run, not LAQ")
        if laq["data"]["image_size"] != image_size:
            raise SpecError(
                f"data.image_size: {image_size}, but the LAQ run {self.reference.run_dir.name} sees "
                f"{laq['data']['image_size']} px frames; pass -s data.image_size={laq['data']['image_size']}"
            )
        self.urls = shard_list(config.shards, laq["data"])
        offset = config.offset or laq["data"]["offsets"][0]
        # what identifies the labels, also the cache key: the resolved weights and offset, not latest:...
        self.config = config.model_copy(update={"laq": str(self.reference.weights), "offset": offset})
        num_tokens, codebook_size = LAQConfig.latent_codes(laq)
        if codebook_size is None:
            raise SpecError(
                f"data.source.laq: {self.reference.run_dir.name} has a continuous latent (no codes)"
            )
        self.parent = read_manifest(Path(self.urls[0]).parent)
        self.manifest_extra = {
            "labels": {
                "laq_run": str(self.reference.run_dir),
                "laq_spec": self.reference.spec_name,
                "weights": str(self.reference.weights),
                "weights_sha256": sha256(self.reference.weights),  # a resumed run rewrites the same file
                "offset": offset,
                "codebook_size": codebook_size,
                "num_tokens": num_tokens,
                "quantizer": laq["model"]["quantizer"]["name"],
            },
            "parent": {
                k: self.parent.get(k) for k in ("source", "source_args", "image_size", "generator", "parent")
            },
        }

    def __len__(self) -> int:
        """Episodes in the shards to label, from their manifest."""
        names = {Path(url).name for url in self.urls}
        return sum(s["num_samples"] for s in self.parent["shards"] if s["file"] in names)

    def episodes(self) -> Iterator[Episode]:
        model = load_laq(self.reference, pick_device(self.config.device))
        for episode in read_episodes(self.urls):
            if len(episode.frames) <= self.config.offset:
                continue  # no pair at this offset
            codes = label_episode(model, episode.frames, self.config.offset, self.config.batch_size)
            yield dataclasses.replace(episode, codes=codes)


def shard_list(shards: str | None, laq_data: dict) -> list[str]:
    """Local shard paths to label: the given pattern, or the LAQ run's own data; each next to a manifest."""
    if shards is None:
        from hlrp_lab.data.dataset import data_urls

        urls = data_urls(laq_data)
    else:
        urls = expand_shards(shards)
    if not urls:
        raise SpecError(f"data.source.shards: no shard matches {shards!r}")
    if not (Path(urls[0]).parent / MANIFEST).is_file():
        raise SpecError(f"data.source.shards: {Path(urls[0]).parent} has no {MANIFEST}; label local shards")
    return urls
