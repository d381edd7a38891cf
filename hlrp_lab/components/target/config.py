"""Target configs: the spec keys of each decoder target (pydantic only, so that a spec is checked without
torch). A target block lives in the decoder's block: ``model.decoder.target``."""

from typing import Any

from pydantic import Field, PositiveInt

from hlrp_lab.components.target import TARGETS
from hlrp_lab.lib.registry import Strict


@TARGETS.register_config("Pixels")
class PixelsConfig(Strict):
    """The frame itself, in [0, 1]."""


@TARGETS.register_config("DINOv2Features")
class DINOv2FeaturesConfig(Strict):
    pretrained: str | None = Field(
        None,
        description="Hub id (e.g. facebook/dinov2-small) or local save_pretrained directory of a transformers "
        "Dinov2Model; null builds `config`, randomly initialised with a fixed seed.",
    )
    revision: str | None = Field(
        None, description="Hub revision (branch, tag or commit) of `pretrained`; null: its default branch."
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of a small Dinov2Config (2 layers of width 64, patches of 8 px) built without "
        '`pretrained` (e.g. {"hidden_size": 32, "num_hidden_layers": 1}).',
    )
    image_size: PositiveInt | None = Field(
        None,
        description="Frames are resized to this side before the model (a multiple of its patch size, e.g. "
        "224 for patches of 14 px); null: data.image_size.",
    )
