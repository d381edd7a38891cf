"""What every latent head does: given a VLA backbone, turn a frame and an instruction into latent-code logits
(B, K, codebook_size) and into the K hidden states (B, K, hidden) that stage 3's action head reads.

A head decides how the backbone is run: the prompt's suffix (its config's ``prompt_suffix``), how many passes,
and whether the true codes take part in training (``logits(..., codes)``). The backbone is called through its
``forward`` and the head's own weights through the head's ``forward``, so that DDP and FSDP hooks see every
call.
"""

from abc import ABC, abstractmethod
from typing import ClassVar, Protocol

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from hlrp_lab.components.latent_head.config import LatentHeadConfig


class Backbone(Protocol):
    """What a head needs of a VLA backbone (``model.vla``): its tokenizer, prompts and last hidden states."""

    tokenizer: PreTrainedTokenizerBase

    def encode(self, instructions: list[str], suffix: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask (B, L) of each prompt, left-padded so that the suffix is last."""
        ...

    def __call__(self, frames: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states (B, N, hidden) whose last L are the prompt's, each seeing the prompt up to itself."""
        ...


class LatentHead(nn.Module, ABC):
    """Latent-code logits from a VLA backbone's last hidden states."""

    teacher_forced: ClassVar[bool] = False  # whether ``logits(..., codes)`` conditions on the true codes

    def __init__(self, config: LatentHeadConfig):
        super().__init__()
        self.num_tokens, self.codebook_size = config.num_tokens, config.codebook_size
        self.suffix = config.prompt_suffix()

    @abstractmethod
    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """(B, K, hidden) hidden states -> (B, K, codebook_size) logits."""

    @abstractmethod
    def query_states(self, backbone: Backbone, frames: torch.Tensor, instructions: list[str]) -> torch.Tensor:
        """(B, K, hidden): the hidden states whose ``forward`` gives the K codes' logits at evaluation."""

    def logits(
        self,
        backbone: Backbone,
        frames: torch.Tensor,
        instructions: list[str],
        codes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, K, codebook_size) logits for frames (B, 3, H, W) in [0, 1]; ``codes`` (B, K) are the true codes in
        training, for a head that conditions on them (teacher forcing), None at evaluation."""
        return self(self.query_states(backbone, frames, instructions).float())
