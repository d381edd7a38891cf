"""Encoder configs: the spec keys of each encoder (pydantic only, so that a spec is checked without torch)."""

from typing import Any, Literal, Self

from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from hlrp_lab.components.encoder import ENCODERS
from hlrp_lab.lib.registry import Strict


@ENCODERS.register_config("CNNEncoder")
class CNNEncoderConfig(Strict):
    channels: list[PositiveInt] = Field(
        [32, 64, 128], min_length=1, description="Output channels of each stride-2 convolution stage."
    )
    pool: Literal["flatten", "mean"] = Field(
        "flatten",
        description="flatten: the tokens read every position of the last feature map (where things moved); "
        "mean: they read its average over positions, so the same motion anywhere in the frame gives the same "
        "latent (a latent action that a linear probe maps to the true action).",
    )


class TransformerConfig(Strict):
    """The keys of a ViT over image patches (the encoder's and the decoder's)."""

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


@ENCODERS.register_config("ViTEncoder")
class ViTEncoderConfig(TransformerConfig):
    temporal_depth: NonNegativeInt = Field(
        0,
        description="0: `depth` layers of joint attention over both frames' patches and the action queries. "
        "More: LAPA's spatio-temporal encoder, `depth` spatial layers within each frame, then this many "
        "temporal layers across the two frames at each patch position; the queries read the change.",
    )
