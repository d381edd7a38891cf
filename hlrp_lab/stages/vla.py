"""What stages 2 and 3 share: the tokenizer, the VLA with its latent queries, and reading labelled data.

The tokenizer is made once per trial (``prepare_tokenizer``) and saved in the run's
``RunLayout.tokenizer(trial)`` folder:
the pretrained model's own, or a word-level one built from the data's instructions; either way with the
latent head's tokens added (``CodeQueries``' query tokens, ``ActTokens``' code tokens). Sessions, resumed runs,
evaluation and later stages load it from there.
"""

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from loguru import logger
from torch import nn
from transformers import PreTrainedTokenizerBase

from hlrp_lab.components.latent_head import LATENT_HEADS
from hlrp_lab.components.latent_head.base import Backbone, LatentHead
from hlrp_lab.components.vla import VLAS
from hlrp_lab.components.vla.tokenizer import (
    load_tokenizer,
    local_tokenizer,
    pretrained_tokenizer,
    save_tokenizer,
    with_tokens,
)
from hlrp_lab.data.loader import FrameData
from hlrp_lab.data.pairs import to_float
from hlrp_lab.data.shards import manifest_of, raw_samples
from hlrp_lab.lib.layout import RunLayout
from hlrp_lab.lib.runs import RunReference
from hlrp_lab.stages.base import Stage


class VLAStage(Stage):
    """A stage whose model is built on a VLA backbone (foundation, finetune): a batch is frames, their
    instructions and the stage's ``target`` (latent codes, action chunks)."""

    target: ClassVar[str]
    data: FrameData
    device: torch.device

    def train_batch(self, index: int) -> dict[str, Any]:
        batch = self.data.train_batch(index)
        moved = to_float({"frame_t": batch["frame_t"], self.target: batch[self.target]}, self.device)
        return {**moved, "instruction": batch["instruction"]}

    @classmethod
    def check_model(cls, spec: dict) -> None:
        """A pretrained model's shapes need its download, unless its architecture is in ``config_file``."""
        vla = spec["model"]["vla"]
        if vla["pretrained"] is None or vla["config_file"] is not None:
            offline = {**vla, "pretrained": None}
            cls.build_model({**spec, "model": {**spec["model"], "vla": offline}})

    @classmethod
    def model_for_weights(cls, spec: dict, tokenizer: PreTrainedTokenizerBase, weights: Path) -> nn.Module:
        """The model of ``spec`` to load a weights file of its run into (sizes the data set, read from it)."""
        return cls.build_model(spec, tokenizer)


class LatentActionVLA(nn.Module):
    """A VLA backbone and a latent head, which decides how the backbone is run: the K hidden states it returns
    (``query_states``) are the model's latent-action features."""

    def __init__(self, backbone: Backbone, latent_head: LatentHead):
        super().__init__()
        self.backbone, self.latent_head = backbone, latent_head
        self.suffix, self.num_queries = latent_head.suffix, latent_head.num_tokens

    def query_states(self, frames: torch.Tensor, instructions: list[str]) -> torch.Tensor:
        """(B, K, hidden) for frames (B, 3, H, W) in [0, 1] and their instructions."""
        return self.latent_head.query_states(self.backbone, frames, instructions)

    def forward(
        self, frames: torch.Tensor, instructions: list[str], codes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Latent-code logits (B, K, codebook_size); ``codes`` (B, K), the true codes in training, let a head
        that decodes them one after another condition on them (teacher forcing)."""
        return self.latent_head.logits(self.backbone, frames, instructions, codes)


def in_batches(
    fn: Callable[..., torch.Tensor],
    frames: np.ndarray,
    instructions: list[str],
    batch_size: int,
    device: torch.device,
    codes: np.ndarray | None = None,
) -> torch.Tensor:
    """``fn(frames, instructions)`` over uint8 frames (N, H, W, 3), ``batch_size`` at a time, as float; with
    ``codes`` (N, K), ``fn(frames, instructions, codes)``."""
    parts = []
    for start in range(0, len(frames), batch_size):
        end = start + batch_size
        batch = to_float({"frame_t": frames[start:end]}, device)
        extra = () if codes is None else (torch.from_numpy(codes[start:end]).to(device),)
        parts.append(fn(batch["frame_t"], instructions[start:end], *extra).float())
    return torch.cat(parts)


def added_tokens(spec: dict) -> list[str]:
    """The latent head's tokens, added to the tokenizer (their embedding rows train, under LoRA too)."""
    return LATENT_HEADS.config(spec["model"]["latent_head"], "model.latent_head").added_tokens()


def build_vla(spec: dict, tokenizer: PreTrainedTokenizerBase) -> LatentActionVLA:
    backbone = VLAS.build(
        spec["model"]["vla"], "model.vla", tokenizer=tokenizer, query_tokens=added_tokens(spec)
    )
    head = LATENT_HEADS.build(
        spec["model"]["latent_head"], "model.latent_head", hidden_size=backbone.hidden_size
    )
    return LatentActionVLA(backbone, head)


def placeholder_tokenizer(spec: dict) -> PreTrainedTokenizerBase:
    """A tokenizer with the special and latent head tokens only: enough to dry-build a model from a config."""
    return with_tokens(local_tokenizer([]), added_tokens(spec))


def tokenizer_dir(spec: dict) -> Path:
    """The trial's tokenizer folder (``RunLayout.tokenizer``): per trial, since a search may vary the latent
    head's tokens."""
    return RunLayout.of(spec).tokenizer(spec["meta"]["trial"])


def reference_tokenizer_dir(reference: RunReference) -> Path:
    """The tokenizer of the referenced weights' trial."""
    return reference.layout.tokenizer(reference.trial)


def prepare_tokenizer(spec: dict, urls: list[str], reference: RunReference | None = None) -> None:
    """Make and save the trial's tokenizer: the referenced run's, the pretrained model's, or one from the
    data's instructions. Nothing if it exists (a resumed run keeps its own)."""
    directory = tokenizer_dir(spec)
    if (directory / "tokenizer_config.json").is_file():
        return
    if reference is not None:
        shutil.copytree(reference_tokenizer_dir(reference), directory)
        return
    pretrained = spec["model"]["vla"]["pretrained"]
    if pretrained is not None:
        tokenizer = pretrained_tokenizer(pretrained)
        if tokenizer.pad_token is None:  # padding is masked out: any token serves
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    else:
        instructions = data_instructions(urls)
        tokenizer = local_tokenizer(instructions)
        logger.info(f"tokenizer: {len(tokenizer)} tokens from {len(instructions)} distinct instructions")
    save_tokenizer(with_tokens(tokenizer, added_tokens(spec)), directory)


def run_tokenizer(spec: dict) -> PreTrainedTokenizerBase:
    return load_tokenizer(tokenizer_dir(spec))


def data_instructions(urls: list[str]) -> list[str]:
    """The distinct instructions of the shards: from their manifest, else by reading the samples."""
    manifest = manifest_of(urls)
    if manifest is not None and "instructions" in manifest and len({Path(url).parent for url in urls}) == 1:
        return manifest["instructions"]
    samples = raw_samples({"url": url} for url in urls)
    return sorted({s["instruction.txt"].decode() for s in samples if "instruction.txt" in s})


def labels_of(urls: list[str]) -> dict:
    """The ``labels`` block of the shards' manifest (written by ``hlrp-lab data label``), or {}."""
    return (manifest_of(urls) or {}).get("labels", {})
