"""GPU memory per rank of a counted model under a training set-up: weights, autocast copies, gradients,
optimizer states and activations, plus a safety margin."""

import math
from dataclasses import dataclass
from typing import Literal

from hlrp_lab.experiment.plan.count import BlockGroup, ModelCount

GB = 2**30  # GB in the plan are GiB, as torch.cuda and nvidia-smi count
CUDA_CONTEXT = 1 * GB  # CUDA context, cuBLAS workspace and NCCL buffers, outside the caching allocator
FRAGMENTATION = 0.10  # of the planned tensors: the caching allocator's blocks are never a perfect fit
ROWS = ("weights", "autocast copies", "gradients", "optimizer states", "activations")

Row = tuple[int, str]  # bytes per rank and what they hold


@dataclass(frozen=True)
class Setup:
    """How the model trains, for a planned world of ``ranks`` GPUs."""

    ranks: int
    strategy: Literal["none", "ddp", "fsdp"]
    precision: Literal["bf16", "fp32"]  # of the compute: bf16 autocast (train.precision auto on CUDA) or fp32
    optimizer: str
    optimizer_states: int  # per trainable parameter
    batch_size: int  # global, per optimizer step
    grad_accum: int
    activation_checkpointing: bool = False
    cpu_offload: bool = False
    attention: Literal["sdpa", "eager"] = "sdpa"
    gpu_memory: float = 80.0  # GB per GPU

    @property
    def micro_batch(self) -> int:
        return self.batch_size // (self.ranks * self.grad_accum)

    @property
    def mixed_fsdp(self) -> bool:
        """FSDP2 all-gathers bf16 parameters and reduces fp32 gradients (MixedPrecisionPolicy)."""
        return self.strategy == "fsdp" and self.precision == "bf16"


@dataclass
class Estimate:
    """Bytes per rank, by row of ``ROWS``, and what each row holds."""

    setup: Setup
    rows: dict[str, int]
    details: dict[str, str]
    activation_parts: dict[str, int]

    @property
    def subtotal(self) -> int:
        return sum(self.rows.values())

    @property
    def margin(self) -> int:
        return CUDA_CONTEXT + round(FRAGMENTATION * self.subtotal)

    @property
    def total(self) -> int:
        return self.subtotal + self.margin

    @property
    def spare(self) -> float:
        """GB left on each GPU (negative: over)."""
        return self.setup.gpu_memory - self.total / GB

    @property
    def fits(self) -> bool:
        return self.spare >= 0


def estimate(count: ModelCount, setup: Setup) -> Estimate:
    """Bytes per rank of ``count``'s model trained as ``setup`` says."""
    activations, parts = activation_bytes(count, setup)
    parts_text = ", ".join(f"{name} {gb(size)}" for name, size in parts.items()) or "not estimated"
    rows = {
        "weights": weights_row(count, setup),
        "autocast copies": autocast_row(count, setup),
        "gradients": gradients_row(count, setup),
        "optimizer states": optimizer_row(count, setup),
        "activations": (activations, parts_text),
    }
    sizes = {row: size for row, (size, _) in rows.items()}
    return Estimate(setup, sizes, {row: text for row, (_, text) in rows.items()}, parts)


def shard(size: int, setup: Setup) -> int:
    """One rank's FSDP shard of ``size`` bytes (none on the GPU with CPU offload)."""
    return 0 if setup.cpu_offload else math.ceil(size / setup.ranks)


def weights_row(count: ModelCount, setup: Setup) -> Row:
    """Every parameter, or under FSDP a shard, the root unit and two blocks gathered (bf16 when mixed)."""
    if setup.strategy != "fsdp":
        return count.weight_bytes, "every parameter on every rank"
    block = 2 * count.largest_block if setup.mixed_fsdp else count.largest_block_bytes
    root = 2 * count.root if setup.mixed_fsdp else count.root_bytes
    shards = shard(count.weight_bytes, setup)
    dtype = "bf16" if setup.mixed_fsdp else "in their dtype"
    where = "on the CPU (cpu_offload)" if setup.cpu_offload else gb(shards)
    text = f"1/{setup.ranks} shard {where} + gathered {dtype}: root unit {gb(root)} + 2 x largest block {gb(block)}"
    return shards + root + 2 * block, text


def autocast_row(count: ModelCount, setup: Setup) -> Row:
    """The bf16 casts autocast keeps for backward of fp32 matmul weights (none under FSDP or in fp32)."""
    if setup.strategy == "fsdp" or setup.precision != "bf16":
        return 0, "none: FSDP gathers bf16 weights" if setup.mixed_fsdp else "none: no autocast"
    frozen = 0 if setup.activation_checkpointing else count.autocast_frozen
    return 2 * (count.autocast_trainable + frozen), "bf16 casts of the fp32 matmul weights, kept for backward"


def gradients_row(count: ModelCount, setup: Setup) -> Row:
    """Gradients of the trainable parameters: DDP's buckets double them, FSDP shards them but one block."""
    if setup.strategy == "ddp":
        return 2 * count.trainable_bytes, "trainable parameters' gradients + DDP's buckets (a second copy)"
    if setup.strategy != "fsdp":
        return count.trainable_bytes, "trainable parameters only, in their dtype"
    bytes_per = count.trainable_bytes / count.trainable if count.trainable else 4
    # one block's gradients, under mixed precision in bf16 with an fp32 reduce-scatter buffer
    unsharded = round(count.largest_block_trainable * (2 + 4 if setup.mixed_fsdp else bytes_per))
    where = " on the CPU" if setup.cpu_offload else ""
    reduce = " and fp32 reduce-scatter buffer" if setup.mixed_fsdp else ""
    text = f"1/{setup.ranks} shard{where} + one block's unsharded gradients{reduce}"
    return shard(count.trainable_bytes, setup) + unsharded, text


def optimizer_row(count: ModelCount, setup: Setup) -> Row:
    """The optimizer's state tensors, each the size and dtype of a trainable parameter (sharded by FSDP)."""
    states = setup.optimizer_states * count.trainable_bytes
    text = f"{setup.optimizer}: {setup.optimizer_states} per trainable parameter"
    if setup.strategy != "fsdp":
        return states, text
    if setup.cpu_offload:
        return 0, "on the CPU (cpu_offload)"
    return shard(states, setup), f"{text}, 1/{setup.ranks} shard"


def block_activation_bytes(group: BlockGroup, micro_batch: int, precision: str, attention: str) -> int:
    """Bytes one block keeps for backward for ``micro_batch`` samples: Korthikanti et al. 2022, "Reducing
    Activation Recomputation in Large Transformer Models", generalised to the block's MLP: per attention
    sublayer 11sbh (+5as^2 with eager attention, whose scores are kept; none with SDPA/flash attention), per
    norm 2sbh, and the MLP 3sbh + 4sbI (x2 gated: two layers into I), in 16-bit; with a 4h GELU MLP and two
    norms that is the paper's s*b*h*(34 + 5as/h). 1-byte dropout masks (sbh per sublayer, as^2 for eager
    scores) stay 1 byte in fp32, the rest doubles. A norm that is not a fused kernel (transformers' RMSNorm)
    keeps 8sbh more: its fp32 input and normalised output."""
    if group.tokens is None or not group.backward:
        return 0
    s, b, h, a = group.tokens, micro_batch, group.hidden, group.heads
    masks = (group.attentions + 1) * s * b * h  # after each attention output and the MLP
    values = group.attentions * 10 * s * b * h + group.norms * 2 * s * b * h
    values += 2 * s * b * h + 4 * s * b * group.mlp * (2 if group.gated else 1)
    if attention == "eager":
        masks += group.attentions * a * s * s * b
        values += group.attentions * 4 * a * s * s * b
    fp32 = group.composite_norms * 8 * s * b * h
    return masks + values * (2 if precision == "fp32" else 1) + fp32


def residual_bytes(count: ModelCount, setup: Setup) -> int:
    """Bytes per element of the residual stream between blocks: bf16 when the weights the blocks compute with
    are (bf16 parameters, FSDP's bf16 all-gather) and autocast is on, else fp32 (autocast casts the inputs of
    matmuls, and the residual additions stay in fp32)."""
    sixteen_bit = count.dtypes.get("bfloat16", 0) + count.dtypes.get("float16", 0)
    half = 2 * sixteen_bit > count.params or setup.mixed_fsdp
    return 2 if setup.precision == "bf16" and half else 4


def activation_bytes(count: ModelCount, setup: Setup) -> tuple[int, dict[str, int]]:
    """Activations per rank and by part: every block's (Korthikanti), or with activation checkpointing each
    block's input (sbh in the residual stream's dtype) and one block's full activations (recomputed in
    backward), plus the convolutions outside blocks (3 copies of each output: convolution, norm, activation)."""
    b, bytes_per = setup.micro_batch, residual_bytes(count, setup)
    parts: dict[str, int] = {}
    largest = 0
    for group in count.groups:
        one = block_activation_bytes(group, b, setup.precision, setup.attention)
        largest = max(largest, one)
        if setup.activation_checkpointing and group.tokens is not None and group.backward:
            kept = group.layers * bytes_per * group.tokens * b * group.hidden
        else:
            kept = group.layers * one
        name = group.part if group.backward else f"{group.part} (no backward)"
        parts[name] = parts.get(name, 0) + kept
    if setup.activation_checkpointing and largest:
        parts["recomputed block"] = largest
    if count.conv_elements:
        parts["convolutions"] = 3 * count.conv_elements * b * bytes_per
    return sum(parts.values()), parts


def gb(size: float) -> str:
    """A size for the details column: GB, or MB below 1 GB."""
    return f"{size / GB:.2f} GB" if size >= GB else f"{size / 2**20:.1f} MB"
