"""The spec keys of the LAQEncoder backbone (pydantic only, so that a spec is checked without torch)."""

from typing import Any, Self

from pydantic import Field, PositiveInt, field_validator, model_validator

from hlrp_lab.components.encoder import ENCODERS
from hlrp_lab.components.vla import VLAS
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.registry import Strict

# The architecture of `laq: null` (the control) where the block leaves it null: laq_mw_cpu's encoder.
CONTROL_ARCHITECTURE = {
    "encoder": {"name": "CNNEncoder", "channels": [32, 64, 128]},
    "image_size": 64,
    "num_tokens": 4,
    "token_dim": 16,
}


@VLAS.register_config("LAQEncoder")
class LAQEncoderConfig(Strict):
    laq: str | None = Field(
        description="The LAQ run whose encoder (architecture and weights) starts the backbone: "
        "latest:<spec_name>, a run directory or a .safetensors file of a run (a latest: reference is pinned "
        "to its run directory when a run starts); null: the encoder from random init (the control)."
    )
    encoder: dict[str, Any] | None = Field(
        None,
        description='The LAQ encoder block ({"name": <registered encoder>, ...its keys}); null: the `laq` '
        "run's model.encoder (with `laq` null: laq_mw_cpu's CNNEncoder). Given with `laq`, it must be the "
        "run's.",
    )
    image_size: PositiveInt | None = Field(
        None,
        description="Frames are resized to this for the encoder; null: the `laq` run's data.image_size (with "
        "`laq` null: 64).",
    )
    num_tokens: PositiveInt | None = Field(
        None,
        description="Latent action tokens the encoder makes; null: the `laq` run's quantizer num_tokens "
        "(with `laq` null: 4).",
    )
    token_dim: PositiveInt | None = Field(
        None,
        description="Size of each latent action token; null: the `laq` run's (its quantizer's code_dim, "
        "FSQ's number of levels; with `laq` null: 16).",
    )
    freeze_encoder: bool = Field(
        False, description="Keep the LAQ encoder's weights as loaded; the transformer on top trains."
    )
    hidden_size: PositiveInt = Field(
        128, description="Width of the transformer over [frame features, instruction, queries]."
    )
    layers: PositiveInt = Field(
        2, description="Transformer layers over [frame features, instruction, queries]."
    )
    heads: PositiveInt = Field(4, description="Attention heads per layer; must divide hidden_size.")
    max_text_tokens: PositiveInt = Field(
        64, description="Longest prompt (instruction and query tokens) the text position table holds."
    )
    pretrained: None = Field(
        None, description="Always null: no transformers model to load (the weights come from `laq`)."
    )
    config_file: None = Field(
        None, description="Always null: the architecture is the `laq` run's encoder and the keys above."
    )

    @field_validator("encoder")
    @classmethod
    def encoder_block(cls, block: dict[str, Any] | None) -> dict[str, Any] | None:
        """The block checked by its encoder's config, defaults filled in (as the LAQ run saved its own)."""
        if block is None:
            return block
        try:
            config = ENCODERS.config(block, "encoder")
        except SpecError as err:
            raise ValueError(str(err)) from None
        return {"name": block["name"], **config.model_dump()}

    @model_validator(mode="after")
    def check_heads(self) -> Self:
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by heads ({self.heads})")
        return self
