"""VLA backbone configs: the spec keys of each VLM family (pydantic only, so that a spec is checked without
torch)."""

from typing import Any, Literal

from pydantic import Field

from hlrp_lab.components.vla import VLAS
from hlrp_lab.lib.registry import Strict


class VLAConfig(Strict):
    pretrained: str | None = Field(
        None,
        description="Hub model id or local save_pretrained directory to load weights (and tokenizer) from; "
        "null builds the family's small model from `config`, randomly initialised.",
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of the family's small default config, merged into it "
        '(e.g. {"text_config": {"num_hidden_layers": 4}}); ignored with `pretrained`.',
    )
    image_size: int | None = Field(
        None, gt=0, description="Frames are resized to this; null: the vision tower's image_size."
    )
    freeze: bool = Field(False, description="Freeze the backbone; only the stage's heads train.")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Weights dtype of a pretrained model (bf16 autocast on CUDA either way)."
    )


for family in ("Qwen2VL", "SmolVLM"):  # every family has the same keys
    VLAS.register_config(family)(VLAConfig)
