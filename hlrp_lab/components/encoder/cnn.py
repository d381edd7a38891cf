"""Convolutional encoder: a stride-2 CNN over both frames and their difference."""

import itertools
import math

import torch
from torch import Tensor, nn

from hlrp_lab.components.encoder import ENCODERS
from hlrp_lab.components.encoder.config import CNNEncoderConfig


def conv_stage(in_channels: int, out_channels: int) -> nn.Sequential:
    """A 4x4 stride-2 convolution (halves the image side), GroupNorm and GELU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1),
        nn.GroupNorm(math.gcd(8, out_channels), out_channels),
        nn.GELU(),
    )


@ENCODERS.register
class CNNEncoder(nn.Module):
    """(frame t, frame t+k) -> ``num_tokens`` latent action tokens of size ``out_dim``."""

    Config = CNNEncoderConfig

    def __init__(
        self, config: CNNEncoderConfig, *, image_size: int, channels: int, num_tokens: int, out_dim: int
    ):
        super().__init__()
        side = image_size >> len(config.channels)
        if side == 0:
            raise ValueError(
                f"image_size {image_size} is too small for {len(config.channels)} stride-2 stages in channels"
            )
        widths = [3 * channels, *config.channels]
        self.convs = nn.Sequential(*(conv_stage(a, b) for a, b in itertools.pairwise(widths)))
        positions = 1 if config.pool == "mean" else side * side
        self.head = nn.Linear(config.channels[-1] * positions, num_tokens * out_dim)
        self.num_tokens, self.pool = num_tokens, config.pool

    def forward(self, frame_t: Tensor, frame_tk: Tensor) -> Tensor:
        """Two (B, C, H, W) frames -> (B, num_tokens, out_dim)."""
        features = self.convs(torch.cat([frame_t, frame_tk, frame_tk - frame_t], dim=1))
        features = features.mean((2, 3)) if self.pool == "mean" else features.flatten(1)
        return self.head(features).unflatten(1, (self.num_tokens, -1))
