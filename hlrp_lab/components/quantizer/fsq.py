"""Finite scalar quantization: each channel is bounded and rounded to a few levels (no codebook to learn)."""

import math
from typing import Annotated

import torch
import vector_quantize_pytorch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import Tensor, nn

from hlrp_lab.components.quantizer.base import QuantizerOutput
from hlrp_lab.components.registry import QUANTIZERS


@QUANTIZERS.register
class FSQ(nn.Module):
    """Latent tokens of ``len(levels)`` channels; the implicit codebook is every combination of levels."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        levels: list[Annotated[int, Field(ge=2)]] = Field(
            [8, 5, 5, 5],
            min_length=1,
            description="Quantization levels per channel: the token size is their count, "
            "the codebook size their product.",
        )
        num_tokens: PositiveInt = Field(4, description="Latent action tokens per transition.")

    def __init__(self, config: Config):
        super().__init__()
        self.dim, self.num_tokens = len(config.levels), config.num_tokens
        self.codebook_size = math.prod(config.levels)
        # The library reads its codebook size with .item(), which the meta device (spec check) cannot do;
        # its buffers are a few integers, so they are built on the CPU.
        with torch.device("cpu"):
            self.fsq = vector_quantize_pytorch.FSQ(
                config.levels,
                preserve_symmetry=2 in config.levels,  # the library requires it for 2 levels
            )

    def forward(self, x: Tensor) -> QuantizerOutput:
        """(B, T, len(levels)) -> quantized (B, T, len(levels)), indices (B, T), zero loss."""
        quantized, indices = self.fsq(x)
        return QuantizerOutput(quantized, indices.long(), x.new_zeros(()))
