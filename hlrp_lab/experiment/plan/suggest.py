"""What to try when a plan does not fit: each setting that makes it fit alone, else all that help together."""

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from hlrp_lab.experiment.distributed import strategy_of
from hlrp_lab.experiment.plan.count import ModelCount
from hlrp_lab.experiment.plan.memory import CUDA_CONTEXT, GB, Estimate, Setup, estimate
from hlrp_lab.lib.world import World
from hlrp_lab.stages import STAGES

MAX_RANKS = 1024  # the largest world a suggestion proposes
GPUS_PER_NODE = 8  # beyond this many ranks a suggestion counts nodes of 8

Option = tuple[str, Setup, ModelCount]  # the flags to pass, the set-up and the model count they give
Rebuild = Callable[[dict], ModelCount | None]  # the spec's count with overrides, None where they do not apply


@dataclass(frozen=True)
class Suggestion:
    flags: str  # what to pass, e.g. "-s train.activation_checkpointing=true"
    estimate: Estimate


def suggestions(
    count: ModelCount, setup: Setup, spec: dict, gpus: int, nodes: int, rebuild: Rebuild | None = None
) -> list[Suggestion]:
    """Settings that make ``spec`` fit, each with its estimate: FSDP, activation checkpointing, more
    accumulation (the same global batch in smaller micro-batches), more GPUs, CPU offload and LoRA (through
    ``rebuild``). If none fits alone, the greedy combination of those that help, whether or not it fits."""
    if setup.gpu_memory * GB <= CUDA_CONTEXT:
        return []  # the CUDA context alone fills the GPU
    found = options(count, setup, spec, gpus, nodes, rebuild)
    tried = [Suggestion(flags, estimate(c, s)) for flags, s, c in found]
    fitting = [s for s in tried if s.estimate.fits]
    if fitting or not found:
        return fitting
    return [greedy(found, count, setup)]


def options(
    count: ModelCount, setup: Setup, spec: dict, gpus: int, nodes: int, rebuild: Rebuild | None
) -> list[Option]:
    """Every setting that applies to ``spec`` and ``setup``, in the order they are shown and combined."""
    shardable = STAGES.config_class(spec["stage"], "stage").shardable
    found: list[Option] = []
    if setup.strategy != "fsdp" and shardable and setup.ranks > 1:
        found.append(("-s train.distributed.strategy=fsdp", replace(setup, strategy="fsdp"), count))
    if not setup.activation_checkpointing and count.blocks:
        checkpointed = replace(setup, activation_checkpointing=True)
        found.append(("-s train.activation_checkpointing=true", checkpointed, count))
    accum = next_accum(setup, count)
    if accum is not None:
        found.append((f"-s train.grad_accum={accum.grad_accum}", accum, count))
    more = more_ranks(setup, count) if shardable else None
    if more is not None:
        flags = world_flags(more.ranks, gpus, nodes)
        if setup.strategy != "fsdp" and strategy_of(spec, World(size=more.ranks)) != "fsdp":
            flags += " -s train.distributed.strategy=fsdp"
        found.append((flags, more, count))
    if setup.strategy == "fsdp" and not setup.cpu_offload:
        found.append(("-s train.distributed.cpu_offload=true", replace(setup, cpu_offload=True), count))
    vla = spec["model"].get("vla")
    if rebuild is not None and vla is not None and vla.get("lora") is None and not vla.get("freeze"):
        lora = rebuild({"model.vla.lora": {}, "model.vla.dtype": "bfloat16"})
        if lora is not None:
            found.append(("-s 'model.vla.lora={}' -s model.vla.dtype=bfloat16", setup, lora))
    return found


def next_accum(setup: Setup, count: ModelCount) -> Setup | None:
    """The least ``grad_accum`` above the spec's that splits the same global batch and fits, else the most
    (a micro-batch of one); None if the batch allows no more."""
    per_rank = setup.batch_size // setup.ranks
    accums = [a for a in range(setup.grad_accum + 1, per_rank + 1) if per_rank % a == 0]
    return first_fit([replace(setup, grad_accum=a) for a in accums], count)


def more_ranks(setup: Setup, count: ModelCount) -> Setup | None:
    """The fewest ranks (doubling) over which FSDP fits with the same global batch and accumulation, else the
    most the batch splits over; None if it splits over no more."""
    candidates = []
    ranks = setup.ranks * 2
    while ranks <= MAX_RANKS and setup.batch_size % (ranks * setup.grad_accum) == 0:
        candidates.append(replace(setup, ranks=ranks, strategy="fsdp"))
        ranks *= 2
    return first_fit(candidates, count)


def first_fit(candidates: list[Setup], count: ModelCount) -> Setup | None:
    """The first of ``candidates`` that fits, else the last (None if there are none)."""
    return next((c for c in candidates if estimate(count, c).fits), candidates[-1] if candidates else None)


def world_flags(ranks: int, gpus: int, nodes: int) -> str:
    """``--gpus N [--nodes M]`` for ``ranks`` ranks, keeping the GPUs per node of a multi-node plan."""
    per_node = gpus if nodes > 1 else min(ranks, max(gpus, GPUS_PER_NODE))
    if ranks % per_node:
        per_node = math.gcd(ranks, per_node)
    return f"--gpus {per_node}" + (f" --nodes {ranks // per_node}" if ranks // per_node > 1 else "")


def greedy(found: list[Option], count: ModelCount, setup: Setup) -> Suggestion:
    """Every option that lowers the total, applied one after the other."""
    flags: list[str] = []
    current, current_count = estimate(count, setup), count
    for flag, option, option_count in found:
        changes = {k: v for k, v in asdict(option).items() if v != getattr(setup, k)}
        trial_setup = replace(current.setup, **changes)
        if trial_setup.batch_size % (trial_setup.ranks * trial_setup.grad_accum):
            continue  # more ranks and more accumulation both split the batch: not both as far
        trial_count = current_count if option_count is count else option_count
        trial = estimate(trial_count, trial_setup)
        if trial.total < current.total:
            flags.append(flag)
            current, current_count = trial, trial_count
    return Suggestion(" ".join(flags), current)
