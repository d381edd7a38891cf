"""LoRA adapters on a VLA backbone through peft: injected in place (parameter names stay the model's, plus
``lora_A``/``lora_B`` and the query tokens' embedding rows), and merged back into plain weights on request."""

import re

from peft import LoraConfig as PeftLoraConfig
from peft import inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

from hlrp_lab.components.vla.config import LoraConfig


def add_lora(
    model: nn.Module, config: LoraConfig, token_ids: list[int], frozen_prefix: str | None = None
) -> None:
    """Freeze ``model`` and inject adapters into the linear layers named in ``config.target_modules``, except
    those under ``frozen_prefix`` (a frozen vision tower); the embedding rows of ``token_ids`` train too."""
    model.requires_grad_(False)
    peft_config = PeftLoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
        exclude_modules=None if frozen_prefix is None else rf"{re.escape(frozen_prefix)}\..*",
        trainable_token_indices={"embed_tokens": token_ids} if token_ids else None,
    )
    inject_adapter_in_model(peft_config, model)
    for parameter in model.parameters():  # adapters train in float32 on a bf16 base, as peft's get_peft_model
        if parameter.requires_grad:
            parameter.data = parameter.data.float()


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter of ``model`` into the weights it adapts and put the plain layer back in its place,
    so that ``model`` has the parameter names of the same model without LoRA; returns how many were merged."""
    replaced: list[str] = []
    for name, module in list(model.named_modules()):
        if any(name.startswith(f"{outer}.") for outer in replaced):
            continue  # inside a wrapper already unloaded
        if isinstance(module, AuxiliaryTrainingWrapper):
            plain = module.unload_and_optionally_merge_module(merge=True, safe_merge=True, adapter_names=None)
        elif isinstance(module, BaseTunerLayer):
            module.merge(safe_merge=True)
            plain = module.get_base_layer()
        else:
            continue
        parent, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent), attribute, plain)
        replaced.append(name)
    return len(replaced)
