"""``hlrp-lab merge-lora``: a LoRA run's weights with the adapters folded into the base, as one plain
safetensors file that the same spec without ``model.vla.lora`` loads (and that needs no peft to use)."""

from pathlib import Path

from loguru import logger
from safetensors.torch import save_file

from hlrp_lab.components.vla.lora import merge_lora
from hlrp_lab.components.vla.tokenizer import load_tokenizer
from hlrp_lab.experiment.checkpoint import unshared
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.layout import merged_weights_name
from hlrp_lab.lib.runs import resolve_reference
from hlrp_lab.lib.weights import base_of, load_weights
from hlrp_lab.stages import STAGES
from hlrp_lab.stages.vla import reference_tokenizer_dir

VLA_STAGES = ("foundation", "finetune")


def merge_run_weights(reference: str, output: Path | None = None) -> Path:
    """Merge the adapters of the weights ``reference`` names (a run directory: its best; a .safetensors file
    of a run; latest:<spec>) and write them to ``output`` (default: beside them); returns the path."""
    found = resolve_reference(reference, "RUN")
    spec = found.spec()
    if spec["stage"] not in VLA_STAGES or spec["model"]["vla"].get("lora") is None:
        raise SpecError(f"{reference}: {found.run_dir.name} did not train LoRA adapters (model.vla.lora)")
    output = output or found.weights.with_name(merged_weights_name(found.weights.name))
    if output.suffix != ".safetensors" or not output.parent.is_dir():
        raise SpecError(f"-o {output}: give a .safetensors file in an existing folder")
    stage = STAGES.get(spec["stage"], "stage")
    model = stage.model_for_weights(spec, load_tokenizer(reference_tokenizer_dir(found)), found.weights)
    load_weights(model, found.weights, "cpu")
    base = base_of(model)
    layers = merge_lora(model)
    metadata = {"merged_from": str(found.weights), **base}
    save_file(unshared(model.state_dict()), str(output), metadata=metadata)
    logger.info(f"merged {layers} adapted layers of {found.weights} into {output}")
    return output
