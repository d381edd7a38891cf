"""The vision-language backbone of stages 2 and 3: a transformers VLM that reads a frame and an instruction.

A family subclass names the transformers class, its small default config (built from scratch, for tests and
CPU specs) and how a frame enters the model. ``pretrained`` loads real weights with ``from_pretrained``
instead (a hub id or a local ``save_pretrained`` directory). The prompt is the family's image block, the
instruction, then the stage's ``suffix`` tokens (its queries), left-padded so that the suffix is last.
"""

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import pydash
import torch
from huggingface_hub import try_to_load_from_cache
from torch import nn
from torch.nn import functional as F
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import CONFIG_NAME

from hlrp_lab.components.vla.config import VLAConfig
from hlrp_lab.components.vla.lora import add_lora
from hlrp_lab.lib.errors import SpecError

# The small language model of every family's default config: 2 layers of width 64, 4 heads of 16.
SMALL_TEXT_MODEL = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}


class VLABackbone(nn.Module, ABC):
    """A transformers VLM returning the last hidden states of [image block, instruction, suffix]."""

    Config = VLAConfig
    model_class: ClassVar[type[PreTrainedModel]]
    small_defaults: ClassVar[dict[str, Any]]  # the small config built without `pretrained` or `config_file`
    image_mean: ClassVar[tuple[float, float, float]]
    image_std: ClassVar[tuple[float, float, float]]

    def __init__(
        self, config: VLAConfig, *, tokenizer: PreTrainedTokenizerBase, query_tokens: list[str] | None = None
    ):
        super().__init__()
        self.tokenizer = tokenizer
        dtype = getattr(torch, config.dtype)
        if config.pretrained is not None:
            self.model = load_pretrained(self.model_class, config.pretrained, dtype, config.revision)
        elif config.config_file is not None:
            self.model = self.model_class(self.file_config(config.config_file, tokenizer)).to(dtype)
        else:
            self.model = self.model_class(self.small_config(config.config, tokenizer)).to(dtype)
        if self.model.get_input_embeddings().num_embeddings < len(tokenizer):
            self.model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        self.image_size = config.image_size or self.model.config.vision_config.image_size
        if self.image_size % self.image_multiple():
            fit = -(-self.image_size // self.image_multiple()) * self.image_multiple()
            raise SpecError(
                f"model.vla.image_size: {self.image_size} px frames do not split into this {type(self).__name__}'s "
                f"merged patches of {self.image_multiple()} px; pass e.g. -s model.vla.image_size={fit}"
            )
        self.register_buffer("mean", torch.tensor(self.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.image_std).view(1, 3, 1, 1), persistent=False)
        self.model.requires_grad_(not config.freeze)
        freeze_unused_lm_head(self.model)
        vision = self.vision_tower_name()
        if config.freeze_vision:
            self.model.get_submodule(vision).requires_grad_(False)
        if config.lora is not None:
            token_ids = tokenizer.convert_tokens_to_ids(query_tokens or [])
            add_lora(self.model, config.lora, token_ids, vision if config.freeze_vision else None)
        # With LoRA on a pretrained base, the frozen weights are the base's: checkpoints leave them out and
        # record the base instead (lib.weights.reloadable_weights).
        self.reloadable = config.pretrained is not None and config.lora is not None
        self.base = {
            "base_model": config.pretrained or "",
            "base_revision": resolved_revision(config.pretrained, config.revision),
        }
        self.prompts: dict[tuple[str, str], list[int]] = {}

    @property
    def hidden_size(self) -> int:
        return self.model.config.text_config.hidden_size

    def small_config(self, overrides: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
        """The family's ``small_defaults`` with ``overrides`` merged in (nested dicts key by key), the text
        model's vocabulary and special token ids, and the image token ids, those of ``tokenizer``."""
        config = pydash.merge({}, self.small_defaults, overrides)
        ids = {
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        config["text_config"] = {**config["text_config"], **ids}
        tokens = {key: tokenizer.convert_tokens_to_ids(t) for key, t in self.image_token_names().items()}
        return self.model_class.config_class(**config, **tokens)

    def file_config(self, path: str, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
        """The architecture of a config.json, with the image token ids of ``tokenizer`` where it has them
        (a local tokenizer numbers its special tokens its own way)."""
        config = self.model_class.config_class.from_json_file(path)
        vocab = tokenizer.get_vocab()
        for key, token in self.image_token_names().items():
            if token in vocab:
                setattr(config, key, vocab[token])
        return config

    @abstractmethod
    def image_token_names(self) -> dict[str, str]:
        """Config keys of the image token ids -> the local tokenizer's tokens for them."""

    @abstractmethod
    def vision_tower_name(self) -> str:
        """The name of the vision tower inside ``self.model`` (what ``freeze_vision`` freezes)."""

    @abstractmethod
    def image_multiple(self) -> int:
        """The frame side must be a multiple of this (the patch size times the patch merge factor)."""

    @abstractmethod
    def image_block(self) -> str:
        """The prompt text that stands for the frame (image tokens and their delimiters)."""

    @abstractmethod
    def image_inputs(self, pixels: torch.Tensor, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's image inputs for normalised (B, 3, S, S) ``pixels``."""

    def token(self, token_id: int) -> str:
        return self.tokenizer.convert_ids_to_tokens(token_id)

    def encode(self, instructions: list[str], suffix: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask (B, L) of each prompt, left-padded; prompts are cached by text."""
        rows = []
        for instruction in instructions:
            key = (instruction, suffix)
            if key not in self.prompts:
                text = f"{self.image_block()}{instruction}{suffix}"
                self.prompts[key] = self.tokenizer(text, add_special_tokens=True)["input_ids"]
            rows.append(self.prompts[key])
        length = max(len(row) for row in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (length - len(row)) + row for row in rows])
        mask = torch.tensor([[0] * (length - len(row)) + [1] * len(row) for row in rows])
        device = self.mean.device
        return ids.to(device), mask.to(device)

    def forward(
        self, frames: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Last hidden states (B, L, hidden_size) for frames (B, 3, H, W) in [0, 1] and encoded prompts."""
        pixels = F.interpolate(
            frames, size=(self.image_size, self.image_size), mode="bilinear", antialias=True
        )
        pixels = ((pixels - self.mean) / self.std).to(self.model.dtype)
        out = self.model.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=False,
            **self.image_inputs(pixels, input_ids),
        )
        return out.last_hidden_state


def freeze_unused_lm_head(model: PreTrainedModel) -> None:
    """The backbone returns hidden states; its language-model head makes no prediction here and gets no
    gradient, so it is frozen (DDP and sharded checkpoints expect every trainable parameter to train) unless it
    is tied to the input embeddings, which do train."""
    head = model.get_output_embeddings()
    if head is not None and head.weight is not model.get_input_embeddings().weight:
        head.requires_grad_(False)


def load_pretrained(
    model_class: type[PreTrainedModel], name: str, dtype: torch.dtype, revision: str | None = None
) -> PreTrainedModel:
    """``from_pretrained`` of a hub id (at ``revision``) or local directory; a missing local path fails with a
    clear error."""
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().is_dir():
        raise SpecError(f"model.vla.pretrained: {name} is not a directory")
    try:
        return model_class.from_pretrained(name, dtype=dtype, revision=revision)
    except OSError as err:
        raise SpecError(
            f"model.vla.pretrained: cannot load {name!r} ({str(err).splitlines()[0]}); give a hub id this "
            "machine can download, or a local save_pretrained directory"
        ) from None


def resolved_revision(name: str | None, revision: str | None) -> str:
    """The commit a hub id's weights came from (its snapshot in the Hub cache, which loading filled), so that
    adapters are never applied to a base that moved on; "" for a local directory or no ``pretrained``."""
    if name is None or Path(name).expanduser().is_dir():
        return ""
    cached = try_to_load_from_cache(name, CONFIG_NAME, revision=revision)
    return Path(cached).parent.name if isinstance(cached, str) else revision or ""
