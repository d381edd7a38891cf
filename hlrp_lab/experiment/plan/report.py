"""A spec's plan and how it shows: a table with its verdict, suggestions and assumptions, or JSON."""

from dataclasses import asdict, dataclass
from typing import Any

from hlrp_lab.experiment.plan.count import ModelCount
from hlrp_lab.experiment.plan.memory import CUDA_CONTEXT, FRAGMENTATION, GB, ROWS, Estimate
from hlrp_lab.experiment.plan.suggest import Suggestion


@dataclass
class Plan:
    spec_name: str
    stage: str
    gpus: int
    nodes: int
    count: ModelCount
    estimate: Estimate
    suggestions: list[Suggestion]
    instruction_tokens: int
    precision_key: str  # train.precision as the spec says
    strategy_key: str  # train.distributed.strategy as the spec says


def format_plan(plan: Plan) -> str:
    """The plan as a table with its verdict and assumptions."""
    lines = [*summary(plan), "", *table(plan.estimate), "", verdict(plan.estimate), *advice(plan)]
    lines += ["", "assumptions:"] + [f"  - {line}" for line in assumptions(plan)]
    return "\n".join(lines)


def summary(plan: Plan) -> list[str]:
    """The spec, the world, the model's parameters and how it trains."""
    count, setup = plan.count, plan.estimate.setup
    trainable = count.trainable / count.params if count.params else 0
    dtypes = ", ".join(f"{name} {human(n)}" for name, n in count.dtypes.items())
    precision = "bf16 autocast" if setup.precision == "bf16" else "fp32"
    ranks = f"{setup.ranks} rank{'s' if setup.ranks > 1 else ''}"
    checkpointing = "on" if setup.activation_checkpointing else "off"
    world = world_text(plan.gpus, plan.nodes)
    batch = f"data.batch_size {setup.batch_size} / ({ranks} x train.grad_accum {setup.grad_accum})"
    return [
        f"{plan.spec_name} ({plan.stage}) on {world} of {setup.gpu_memory:g} GB, from a meta-device build",
        f"  parameters     {count.params:,} ({human(count.params)}): {dtypes}",
        f"  trainable      {count.trainable:,} ({human(count.trainable)}, {trainable:.1%})",
        f"  strategy       {strategy_text(plan)}",
        f"  precision      {precision} (train.precision {plan.precision_key}, on CUDA)",
        f"  micro-batch    {setup.micro_batch} per rank = {batch}",
        f"  activation checkpointing {checkpointing}; {count.blocks} transformer blocks",
    ]


def strategy_text(plan: Plan) -> str:
    setup = plan.estimate.setup
    text = setup.strategy + (f" over {setup.ranks} ranks" if setup.ranks > 1 else "")
    if plan.strategy_key == "auto":
        text += " (train.distributed.strategy auto)"
    if setup.mixed_fsdp:
        text += "; bf16 all-gather, fp32 reduce-scatter"
    if setup.cpu_offload:
        text += "; cpu_offload"
    return text


def table(result: Estimate) -> list[str]:
    """GB per rank by row, with what each row holds, the margin and the total."""
    rows = [f"  {row:<20}{result.rows[row] / GB:>9.2f}   {result.details[row]}" for row in ROWS]
    margin = f"CUDA context {CUDA_CONTEXT / GB:.0f} GB + {FRAGMENTATION:.0%} fragmentation"
    return [
        f"  {'per rank':<20}{'GB':>9}",
        *rows,
        f"  {'subtotal':<20}{result.subtotal / GB:>9.2f}",
        f"  {'safety margin':<20}{result.margin / GB:>9.2f}   {margin}",
        f"  {'total':<20}{result.total / GB:>9.2f}",
    ]


def advice(plan: Plan) -> list[str]:
    """What to try when the plan does not fit: its suggestions, or why there are none."""
    result, found = plan.estimate, plan.suggestions
    if result.fits:
        return []
    if not found:
        if result.setup.gpu_memory * GB <= CUDA_CONTEXT:
            return [f"  the CUDA context alone takes {CUDA_CONTEXT / GB:.0f} GB"]
        return ["  no setting the planner knows makes it fit: a smaller model or larger GPUs"]
    together = not all(s.estimate.fits for s in found)
    lines = ["nothing alone makes it fit; all of these together come closest:" if together else "try:"]
    for suggestion in found:
        outcome = "fits" if suggestion.estimate.fits else "still over"
        lines.append(f"  {suggestion.flags:<58} -> {suggestion.estimate.total / GB:.1f} GB ({outcome})")
    return lines


def verdict(result: Estimate) -> str:
    memory = f"{result.setup.gpu_memory:g} GB"
    if result.fits:
        return f"fits in {memory} per GPU with {result.spare:.1f} GB to spare"
    return f"does not fit: needs {result.total / GB:.1f} GB per GPU, {memory} available ({-result.spare:.1f} GB over)"


def human(number: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if number >= size:
            return f"{number / size:.2f}{unit}"
    return str(number)


def world_text(gpus: int, nodes: int) -> str:
    ranks = gpus * nodes
    text = f"{ranks} GPU{'s' if ranks > 1 else ''}"
    return text + (f" ({nodes} nodes x {gpus})" if nodes > 1 else "")


def assumptions(plan: Plan) -> list[str]:
    """The model of memory behind the numbers, one line each."""
    setup = plan.estimate.setup
    attention = (
        "SDPA/flash attention (no 5as/h score term)"
        if setup.attention == "sdpa"
        else "eager attention (+5as^2 per block)"
    )
    return [
        "GB = 2^30 bytes; parameters, dtypes and requires_grad from the model built on the meta device",
        (
            "weights: each parameter in its dtype; FSDP: a 1/N shard, plus the root unit (everything outside the "
            "transformer blocks, kept gathered from forward to backward) and two blocks all-gathered (FSDP2 "
            "prefetches the next), bf16 under mixed precision"
        ),
        (
            "autocast copies (none/DDP, fp32 weights, bf16 autocast): the bf16 cast of every matmul weight that "
            "trains, and (without activation checkpointing) of the frozen ones inside blocks that train, is kept "
            "for backward"
        ),
        (
            "gradients: trainable parameters, in their dtype; DDP keeps its buckets as a second copy "
            "(gradient_as_bucket_view off, as the lab runs DDP); FSDP: a shard plus one block being reduced"
        ),
        (
            f"optimizer states: {setup.optimizer} keeps {setup.optimizer_states} per trainable parameter in its "
            "dtype; the step's foreach temporaries come after the activations are freed and are not added"
        ),
        (
            "activations: Korthikanti et al. 2022 per transformer block, s*b*(18h + 4I) bytes in 16-bit (8I for "
            "a gated MLP; = 34sbh for a 4h MLP; +8sbh per norm that is not a fused kernel: transformers' RMSNorm), "
            f"{attention}; with activation checkpointing each block's input (sbh in the residual dtype) and one "
            "block recomputed"
        ),
        *tokens_text(plan),
        *plan.count.notes,
        (
            f"margin: {CUDA_CONTEXT / GB:.0f} GB CUDA context (cuBLAS, NCCL) + {FRAGMENTATION:.0%} allocator "
            "fragmentation; embeddings' and heads' activations and the loss are not counted"
        ),
    ]


def tokens_text(plan: Plan) -> list[str]:
    """The tokens each part's blocks see (none if no part's are known)."""
    parts = {g.part: g.tokens for g in plan.count.groups if g.tokens is not None}
    if "language" in parts:
        vision = f", vision tower s = {parts['vision']} patches per frame" if "vision" in parts else ""
        return [
            (
                f"tokens: language model s = {parts['language']} (image tokens, {plan.instruction_tokens} "
                f"instruction tokens (--instruction-tokens), query tokens){vision}"
            )
        ]
    if parts:
        known = ", ".join(f"{part} s = {tokens}" for part, tokens in parts.items())
        return [
            (
                f"tokens: {known}; a rough estimate for LAQ: convolutions count 3 copies of each output, "
                "embeddings and heads nothing"
            )
        ]
    return []


def plan_json(plan: Plan) -> dict[str, Any]:
    """The plan's numbers (bytes and GB per rank) as a JSON-ready dict."""
    count, result = plan.count, plan.estimate
    return {
        "spec_name": plan.spec_name,
        "stage": plan.stage,
        "gpus": plan.gpus,
        "nodes": plan.nodes,
        "setup": {**asdict(result.setup), "micro_batch": result.setup.micro_batch},
        "params": count.params,
        "trainable": count.trainable,
        "trainable_fraction": count.trainable / count.params if count.params else 0.0,
        "dtypes": count.dtypes,
        "weight_bytes": count.weight_bytes,
        "blocks": count.blocks,
        "block_groups": [asdict(g) for g in count.groups],
        **estimate_json(result),
        "verdict": verdict(result),
        "suggestions": [{"flags": s.flags, **estimate_json(s.estimate)} for s in plan.suggestions],
        "assumptions": assumptions(plan),
    }


def estimate_json(result: Estimate) -> dict[str, Any]:
    return {
        "bytes": dict(result.rows),
        "gb": {row: round(size / GB, 4) for row, size in result.rows.items()},
        "activations_gb": {part: round(size / GB, 4) for part, size in result.activation_parts.items()},
        "subtotal_gb": round(result.subtotal / GB, 4),
        "margin_gb": round(result.margin / GB, 4),
        "total_gb": round(result.total / GB, 4),
        "total_bytes": result.total,
        "fits": result.fits,
        "spare_gb": round(result.spare, 4),
    }
