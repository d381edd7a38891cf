"""VLA backbone configs: the spec keys of each VLM family (pydantic only, so that a spec is checked without
torch)."""

from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, PositiveInt, field_validator, model_validator

from hlrp_lab.components.vla import VLAS
from hlrp_lab.lib.registry import Strict

# The linear layers of a Llama/Qwen-style decoder block (attention and MLP projections).
DECODER_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraConfig(Strict):
    """LoRA adapters (peft): the backbone's weights are frozen, low-rank adapters on ``target_modules`` and the
    rows of the stage's query tokens in the input embeddings train."""

    r: PositiveInt = Field(16, description="Rank of each adapter.")
    alpha: float = Field(32.0, gt=0, description="Scaling numerator: adapters are scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on each adapter's input.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(DECODER_PROJECTIONS),
        min_length=1,
        description="Names (last part) of the linear layers that get adapters, in the language model and "
        "(unless freeze_vision) the vision tower.",
    )


class VLAConfig(Strict):
    pretrained: str | None = Field(
        None,
        description="Hub model id or local save_pretrained directory to load weights (and tokenizer) from; "
        "null builds the model from `config_file` or the family's small config, randomly initialised.",
    )
    revision: str | None = Field(
        None, description="Hub revision (branch, tag or commit) of `pretrained`; null: its default branch."
    )
    config_file: str | None = Field(
        None,
        description="A transformers config.json (path relative to the checkout) giving the architecture: "
        "built randomly initialised without `pretrained`; with it, what `spec check` dry-builds offline.",
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of the family's small default config, merged into it "
        '(e.g. {"text_config": {"num_hidden_layers": 4}}); ignored with `pretrained` or `config_file`.',
    )
    image_size: int | None = Field(
        None, gt=0, description="Frames are resized to this; null: the vision tower's image_size."
    )
    freeze: bool = Field(False, description="Freeze the backbone; only the stage's heads train.")
    freeze_vision: bool = Field(
        False, description="Freeze the vision tower (no LoRA adapters in it either); the rest trains."
    )
    lora: LoraConfig | None = Field(
        None,
        description="LoRA adapters instead of full finetuning; with `pretrained`, checkpoints keep only the "
        "weights that train (the base is loaded again from `pretrained` at `revision`).",
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="Weights dtype of the backbone (bf16 autocast on CUDA either way; bfloat16 halves the "
        "memory of frozen weights, e.g. a LoRA base).",
    )

    @field_validator("config_file")
    @classmethod
    def config_file_exists(cls, value: str | None) -> str | None:
        if value is None:
            return value
        path = Path(value)
        if path.is_absolute() or ".." in path.parts or path.suffix != ".json":
            raise ValueError(
                "give a .json file inside the checkout, relative to it, e.g. specs/configs/x.json"
            )
        if not path.is_file():
            raise ValueError(f"{value} not found (paths are relative to the checkout's root)")
        return value

    @model_validator(mode="after")
    def one_way_to_train(self) -> Self:
        if self.freeze and self.lora is not None:
            raise ValueError("`freeze` and `lora` both set: freeze trains the heads only, LoRA adds adapters")
        return self


for family in ("Qwen2VL", "Qwen25VL", "SmolVLM"):  # every family has the same keys
    VLAS.register_config(family)(VLAConfig)
