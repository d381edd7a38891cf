"""Encoder configs: the spec keys of each encoder (pydantic only, so that a spec is checked without torch)."""

from typing import Any, Self

from pydantic import Field, PositiveInt, model_validator

from hlrp_lab.components.encoder import ENCODERS
from hlrp_lab.lib.registry import Strict


@ENCODERS.register_config("CNNEncoder")
class CNNEncoderConfig(Strict):
    channels: list[PositiveInt] = Field(
        [32, 64, 128], min_length=1, description="Output channels of each stride-2 convolution stage."
    )


@ENCODERS.register_config("ViTEncoder")
class ViTEncoderConfig(Strict):
    patch_size: PositiveInt = Field(
        8, description="Side of the square image patches; must divide image_size."
    )
    dim: PositiveInt = Field(128, description="Transformer width; must be divisible by heads.")
    depth: PositiveInt = Field(2, description="Number of transformer layers.")
    heads: PositiveInt = Field(4, description="Attention heads per layer.")
    mlp_ratio: float = Field(4.0, gt=0, description="Hidden size of each MLP block, as a multiple of dim.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout inside the transformer layers.")

    @model_validator(mode="after")
    def check_heads(self) -> Self:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        return self

    def layer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of a pre-norm GELU torch transformer layer of this size."""
        return {
            "d_model": self.dim,
            "nhead": self.heads,
            "dim_feedforward": round(self.dim * self.mlp_ratio),
            "dropout": self.dropout,
            "activation": "gelu",
            "batch_first": True,
            "norm_first": True,
        }
