"""Decoder configs: the spec keys of each decoder (pydantic only, so that a spec is checked without torch)."""

from typing import Any

from pydantic import Field, field_validator

from hlrp_lab.components.decoder import DECODERS
from hlrp_lab.components.encoder.config import TransformerConfig
from hlrp_lab.components.target import TARGETS
from hlrp_lab.lib.errors import SpecError


@DECODERS.register_config("ViTDecoder")
class ViTDecoderConfig(TransformerConfig):
    predict_residual: bool = Field(
        True,
        description="Predict frame t plus a change (starting from the copy-frame-t baseline) "
        "rather than a sigmoid image (for a feature target: the features themselves, unbounded).",
    )
    target: dict[str, Any] = Field(
        default_factory=lambda: {"name": "Pixels"},
        description='What the decoder predicts of frame t+k from frame t\'s: {"name": "Pixels"} (the frame), '
        'or {"name": "DINOv2Features", "pretrained": ..., "config": {...}, "image_size": ...} (frozen '
        "features; docs/LAQ.md).",
    )

    @field_validator("target")
    @classmethod
    def check_target(cls, block: dict[str, Any]) -> dict[str, Any]:
        """The target block against its registered config, defaults filled in."""
        try:
            config = TARGETS.config(block, "target")
        except SpecError as err:
            raise ValueError(str(err)) from None
        return {"name": block["name"], **config.model_dump()}
