"""What a plan reads from a spec: the checked spec, its model counted on the meta device, and its training
set-up."""

from pathlib import Path
from typing import Any

import pydash
import torch
from torch import nn

from hlrp_lab.experiment.distributed import strategy_of
from hlrp_lab.experiment.optim import optimizer_kwargs
from hlrp_lab.experiment.plan.count import ModelCount, Part, count_model
from hlrp_lab.experiment.plan.memory import Setup
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.world import World
from hlrp_lab.spec.check import check_spec
from hlrp_lab.spec.spec_util import read_spec_file, resolve_spec, spec_variables
from hlrp_lab.stages import STAGES
from hlrp_lab.stages.config import LAQConfig
from hlrp_lab.stages.laq import LatentActionModel
from hlrp_lab.stages.vla import LatentActionVLA

# Optimizer state tensors per trainable parameter, each of the parameter's size and dtype (torch.optim), where
# not 2 as for Adam and its kin (exp_avg, exp_avg_sq) or an optimizer not named here. SGD and RMSprop keep one
# more with momentum, RMSprop one more centered; Adafactor's factored statistics are a vanishing share.
OPTIMIZER_STATES = {"Adagrad": 1, "ASGD": 1, "SGD": 0, "RMSprop": 1, "Adafactor": 0}


def planned_spec(spec_file: str | Path, spec_name: str, values: dict[str, Any], ranks: int) -> dict:
    """The checked spec for ``ranks`` ranks with the ``-s`` ``values``; a ${var} left unset stays as its text
    where a string is valid (the data's location does not change the plan), and is an error naming it where
    the plan needs its value."""
    unset = {name: f"${{{name}}}" for name in spec_variables(read_spec_file(spec_file).get(spec_name, {}))}
    spec = resolve_spec(spec_file, spec_name, {**unset, **values})
    try:
        return check_spec(spec, ranks=ranks)
    except SpecError as err:
        key = str(err).split(":", 1)[0]
        names = sorted(spec_variables(pydash.get(spec, key)))
        if names:
            raise SpecError(
                f"{key}: the plan needs the value of ${{{names[0]}}}; pass -s {names[0]}=VALUE"
            ) from None
        raise


def count_spec(spec: dict, instruction_tokens: int) -> ModelCount:
    """Build ``spec``'s model on the meta device (no memory) and count it."""
    spec = plannable(spec)
    try:
        with torch.device("meta"):
            model = STAGES.get(spec["stage"], "stage").build_model(spec)
    except SpecError:
        raise  # names its field already
    except ValueError as err:
        raise SpecError(f"model: {err}") from None
    image_size = spec["data"]["image_size"] if isinstance(model, LatentActionModel) else None
    return count_model(model, model_parts(model, spec, instruction_tokens), image_size)


def plannable(spec: dict) -> dict:
    """``spec`` with a model the planner can build offline: a pretrained VLA from its ``config_file`` (the same
    architecture, randomly initialised on the meta device)."""
    vla = spec["model"].get("vla")
    if vla is None or vla.get("pretrained") is None:
        return spec
    if vla.get("config_file") is None:
        raise SpecError(
            f"model.vla.pretrained: the planner builds the model on the meta device, offline, and the shapes of "
            f"{vla['pretrained']!r} come with its download; give its config.json as model.vla.config_file "
            "(e.g. -s model.vla.config_file=specs/configs/qwen2_5_vl_7b.json)"
        )
    return {**spec, "model": {**spec["model"], "vla": {**vla, "pretrained": None}}}


def model_parts(model: nn.Module, spec: dict, instruction_tokens: int) -> list[Part]:
    """The parts of the lab's models and the tokens per sample their blocks see: a VLA's vision tower (its
    patches) and language model (the prompt: image block, instruction, query tokens), an LAQEncoder
    backbone's transformer (frame tokens and the prompt; its LAQ encoder's blocks, if any, are left unknown),
    an LAQ's encoder (both frames' patches and the action queries) and decoder (frame t's patches)."""
    vla = next((m for m in model.modules() if isinstance(m, LatentActionVLA)), None)
    parts: list[Part] = []
    if vla is not None and not hasattr(vla.backbone, "image_block"):  # LAQEncoder: frame tokens, then prompt
        backbone = vla.backbone
        prompt = len(backbone.tokenizer(vla.suffix)["input_ids"]) + instruction_tokens
        parts.append(("language", backbone.transformer, backbone.frame_position.shape[1] + prompt))
    elif vla is not None:
        backbone = vla.backbone
        prompt = backbone.tokenizer(backbone.image_block() + vla.suffix)["input_ids"]
        vision = vision_tower(backbone)
        patch = getattr(backbone.model.config.vision_config, "patch_size", None)
        if vision is not None and patch:
            parts.append(("vision", vision, (backbone.image_size // patch) ** 2))
        parts.append(("language", backbone, len(prompt) + instruction_tokens))
    elif isinstance(model, LatentActionModel):
        size, queries = spec["data"]["image_size"], LAQConfig.latent_codes(spec)[0]
        encoder, decoder = spec["model"]["encoder"], spec["model"]["decoder"]
        if "patch_size" in encoder:  # a ViT: both frames' patches and the queries
            parts.append(("encoder", model.encoder, 2 * (size // encoder["patch_size"]) ** 2 + queries))
        if "patch_size" in decoder:
            parts.append(("decoder", model.decoder, (size // decoder["patch_size"]) ** 2))
    return parts


def vision_tower(backbone: nn.Module) -> nn.Module | None:
    """The VLA backbone's vision tower: the module its family names, else the outermost module whose config is
    the vision config."""
    name = getattr(backbone, "vision_tower_name", None)
    if callable(name):
        try:
            return backbone.model.get_submodule(name())
        except AttributeError:
            pass
    vision_config = type(backbone.model.config.vision_config)
    return next(
        (m for m in backbone.model.modules() if isinstance(getattr(m, "config", None), vision_config)), None
    )


def setup_of(spec: dict, ranks: int, gpu_memory: float, attention: str = "sdpa") -> Setup:
    """The spec's training set-up on ``ranks`` CUDA GPUs."""
    train, optim = spec["train"], spec["optim"]
    optimizer_kwargs(optim)  # a spec error for an unknown optimizer or argument
    return Setup(
        ranks=ranks,
        strategy=strategy_of(spec, World(size=ranks)),  # type: ignore[arg-type]
        precision="fp32" if train["precision"] == "fp32" else "bf16",
        optimizer=optim["name"],
        optimizer_states=optimizer_states(optim),
        batch_size=spec["data"]["batch_size"],
        grad_accum=train["grad_accum"],
        activation_checkpointing=train["activation_checkpointing"],
        cpu_offload=train["distributed"]["cpu_offload"],
        attention=attention,  # type: ignore[arg-type]
        gpu_memory=gpu_memory,
    )


def optimizer_states(optim: dict) -> int:
    """State tensors per trainable parameter of the ``optim`` block's optimizer."""
    name = optim["name"]
    states = OPTIMIZER_STATES.get(name, 2)
    if name in ("SGD", "RMSprop") and optim.get("momentum", 0):
        states += 1
    if name == "RMSprop" and optim.get("centered"):
        states += 1
    if name in ("Adam", "AdamW") and optim.get("amsgrad"):
        states += 1
    return states
