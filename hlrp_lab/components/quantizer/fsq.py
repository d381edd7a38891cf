"""Finite scalar quantization: each channel is bounded and rounded to a few levels (no codebook to learn)."""

import math

import torch
import vector_quantize_pytorch
from torch import Tensor, nn

from hlrp_lab.components.quantizer import QUANTIZERS
from hlrp_lab.components.quantizer.base import QuantizerOutput
from hlrp_lab.components.quantizer.config import FSQConfig


@QUANTIZERS.register
class FSQ(nn.Module):
    """Latent tokens of ``len(levels)`` channels; the implicit codebook is every combination of levels."""

    Config = FSQConfig

    def __init__(self, config: FSQConfig):
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

    def codes_to_latent(self, indices: Tensor) -> Tensor:
        """Code ids (B, T) -> their level vectors (B, T, len(levels)), as forward returns them."""
        return self.fsq.indices_to_codes(indices)
