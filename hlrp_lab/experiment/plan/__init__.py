"""Will a spec fit? GPU memory per rank from a meta-device build of its model (no memory allocated, offline).

``count`` reads the meta model (parameters, their dtype and ``requires_grad``, so LoRA, frozen parts and bf16
weights flow in; the transformer blocks, FSDP's units, with their width and the tokens they see), ``memory``
turns a count and a ``Setup`` into bytes per rank, ``suggest`` re-estimates with the settings that would make
it fit, ``spec`` reads all of that from a spec and ``report`` shows the plan. ``hlrp-lab spec plan`` is the
command; docs/PLANNING.md explains the model of memory.
"""

from pathlib import Path
from typing import Any

from hlrp_lab.experiment.plan.count import ModelCount
from hlrp_lab.experiment.plan.memory import estimate
from hlrp_lab.experiment.plan.report import Plan, format_plan, plan_json
from hlrp_lab.experiment.plan.spec import count_spec, planned_spec, setup_of
from hlrp_lab.experiment.plan.suggest import suggestions
from hlrp_lab.lib.errors import SpecError

__all__ = ["Plan", "format_plan", "plan_json", "plan_spec"]


def plan_spec(
    spec_file: str | Path,
    spec_name: str,
    values: dict[str, Any],
    gpus: int = 1,
    nodes: int = 1,
    gpu_memory: float = 80.0,
    instruction_tokens: int = 32,
    attention: str = "sdpa",
) -> Plan:
    """The memory plan of a spec on ``nodes`` x ``gpus`` GPUs of ``gpu_memory`` GB, with suggestions when it
    does not fit."""
    ranks = gpus * nodes
    spec = planned_spec(spec_file, spec_name, values, ranks)
    count = count_spec(spec, instruction_tokens)
    setup = setup_of(spec, ranks, gpu_memory, attention)
    result = estimate(count, setup)

    def rebuild(overrides: dict[str, Any]) -> ModelCount | None:
        try:
            return count_spec(
                planned_spec(spec_file, spec_name, {**values, **overrides}, ranks), instruction_tokens
            )
        except SpecError:
            return None

    advice = [] if result.fits else suggestions(count, setup, spec, gpus, nodes, rebuild)
    train = spec["train"]
    return Plan(
        spec_name,
        spec["stage"],
        gpus,
        nodes,
        count,
        result,
        advice,
        instruction_tokens,
        precision_key=train["precision"],
        strategy_key=train["distributed"]["strategy"],
    )
