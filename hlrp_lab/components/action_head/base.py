"""The action head contract: a backbone feature vector per sample -> a chunk of continuous actions in [-1, 1]."""

import itertools
from abc import ABC, abstractmethod

from pydantic import BaseModel
from torch import Tensor, nn


def mlp(in_dim: int, hidden: int, layers: int, out_dim: int) -> nn.Sequential:
    """``layers`` hidden Linear + GELU blocks of width ``hidden``, then a Linear to ``out_dim``."""
    widths = [in_dim] + [hidden] * layers
    blocks = [m for a, b in itertools.pairwise(widths) for m in (nn.Linear(a, b), nn.GELU())]
    return nn.Sequential(*blocks, nn.Linear(widths[-1], out_dim))


class ActionHead(nn.Module, ABC):
    """Maps features (B, feature_dim) to action chunks (B, chunk, action_dim).

    Actions are normalised to [-1, 1] by the caller (clipped and rescaled with the training data's 1st/99th
    percentiles); a head neither normalises nor denormalises. Losses are computed in float32 so that they
    are safe under bf16 autocast, and ``predict`` returns float32, clamped to [-1, 1], and is deterministic.
    """

    def __init__(self, config: BaseModel, *, feature_dim: int, action_dim: int, chunk: int):
        super().__init__()
        self.config = config
        self.feature_dim, self.action_dim, self.chunk = feature_dim, action_dim, chunk

    @abstractmethod
    def loss(self, features: Tensor, actions: Tensor) -> Tensor:
        """Features (B, feature_dim) and target actions (B, chunk, action_dim) in [-1, 1] -> scalar loss."""

    @abstractmethod
    def predict(self, features: Tensor) -> Tensor:
        """Features (B, feature_dim) -> actions (B, chunk, action_dim), float32 in [-1, 1]."""
