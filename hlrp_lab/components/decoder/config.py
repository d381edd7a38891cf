"""Decoder configs: the spec keys of each decoder (pydantic only, so that a spec is checked without torch)."""

from pydantic import Field

from hlrp_lab.components.decoder import DECODERS
from hlrp_lab.components.encoder.config import ViTEncoderConfig


@DECODERS.register_config("ViTDecoder")
class ViTDecoderConfig(ViTEncoderConfig):
    predict_residual: bool = Field(
        True,
        description="Predict frame t plus a change (starting from the copy-frame-t baseline) "
        "rather than a sigmoid image.",
    )
