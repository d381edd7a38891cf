"""Weights that a checkpoint leaves out because the model rebuilds them: the frozen base of a LoRA model loaded
from ``pretrained``. A module says so with ``reloadable = True`` and names its base in ``base`` (model and
revision); checkpoints then hold the trainable weights (adapters, heads) and buffers only, with the base in
their metadata, and loading checks that exactly those weights are missing and that the base is the same."""

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_model
from torch import nn

from hlrp_lab.lib.errors import CheckpointError

WRAPPER_PREFIX = "_checkpoint_wrapped_module."  # torch's activation checkpoint wrapper; not in state dicts


def reloadable_weights(model: nn.Module) -> set[str]:
    """State-dict names of the frozen parameters of every ``reloadable`` module of ``model``."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        if getattr(module, "reloadable", False):
            dot = f"{prefix}." if prefix else ""
            frozen = module.named_parameters(remove_duplicate=False)
            names.update(f"{dot}{name}" for name, p in frozen if not p.requires_grad)
    return {name.replace(WRAPPER_PREFIX, "") for name in names}


def base_of(model: nn.Module) -> dict[str, str]:
    """The base model and revision of ``model``'s reloadable module ({} when it has none)."""
    for module in model.modules():
        if getattr(module, "reloadable", False):
            return dict(module.base)
    return {}


def kept_weights(model: nn.Module, omitted: set[str]) -> nn.Module | dict[str, torch.Tensor]:
    """What a checkpoint of ``model`` holds: the model itself, or its state dict without the ``omitted``
    (``reloadable_weights``) ones."""
    if not omitted:
        return model
    return {name: tensor for name, tensor in model.state_dict().items() if name not in omitted}


def file_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file (reading its header checks that the file is whole)."""
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def load_weights(model: nn.Module, path: Path, device: torch.device | str) -> None:
    """Load a weights file into ``model``: every weight, or all but ``model``'s reloadable ones when the file
    was written without them (then from the same base). A mismatch raises CheckpointError (a RuntimeError)."""
    omitted = reloadable_weights(model)
    if not omitted:
        load_model(model, str(path), device=str(device))
        return
    check_base(model, file_metadata(path), path)
    missing, unexpected = load_model(model, str(path), strict=False, device=str(device))
    absent = set(missing) - omitted
    if absent or unexpected:
        shown = sorted(absent)[:3] or sorted(unexpected)[:3]
        raise CheckpointError(
            f"{path} does not match the spec's model: {'missing' if absent else 'unexpected'} {', '.join(shown)}"
        )


def check_base(model: nn.Module, metadata: dict[str, str], path: Path) -> None:
    """The file's base model and revision (when recorded) must be ``model``'s."""
    base = base_of(model)
    saved = {key: metadata.get(key, "") for key in base}
    if not saved.get("base_model"):
        raise CheckpointError(
            f"{path} holds full weights, but this LoRA model on {base['base_model']} expects adapters only; "
            "load it with the spec it was trained with"
        )
    if saved["base_model"] != base["base_model"]:
        raise CheckpointError(
            f"{path} holds adapters for {saved['base_model']}, not {base['base_model']}; pass "
            f"-s model.vla.pretrained={saved['base_model']}"
        )
    if saved["base_revision"] and base["base_revision"] and saved["base_revision"] != base["base_revision"]:
        raise CheckpointError(
            f"{path} was trained on {saved['base_model']} at revision {saved['base_revision']}, this base is at "
            f"{base['base_revision']}; pass -s model.vla.revision={saved['base_revision']}"
        )
