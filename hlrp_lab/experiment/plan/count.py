"""Counting a model built on the meta device: parameters, dtypes, trainable share and transformer blocks."""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hlrp_lab.experiment.distributed import block_classes

Part = tuple[str, nn.Module, int | None]  # a part's name, its module and the tokens per sample its blocks see
FUSED_NORMS = (nn.LayerNorm, nn.GroupNorm)  # one kernel that keeps only its input (and small statistics)


@dataclass(frozen=True)
class BlockGroup:
    """The transformer blocks of one class in one part of the model (a VLA's vision tower, its language
    model; an LAQ encoder, its decoder): what an activation estimate needs of them."""

    part: str  # "vision", "language", "encoder", "decoder", "blocks"
    block: str  # the class name
    layers: int
    hidden: int  # h: the width of the residual stream
    heads: int  # a: attention heads (only the eager-attention score term uses it)
    mlp: int  # I: the MLP's inner width
    gated: bool  # a gated (SwiGLU) MLP: two linear layers into the inner width
    attentions: int  # attention sublayers per block (a decoder layer with cross-attention has two)
    norms: int  # normalisation layers per block
    # ... of which are not torch's fused LayerNorm/GroupNorm kernels: transformers' RMSNorm computes in fp32 in
    # Python ops and keeps its fp32 input and normalised output besides the normalised output it returns
    composite_norms: int
    tokens: int | None  # s: tokens a sample gives each block; None: unknown, not estimated
    # Whether backward reaches these blocks: something in them, or before them, trains. A frozen vision
    # tower that nothing trains before keeps no activations (autograd records no graph there).
    backward: bool = True


@dataclass(frozen=True)
class ModelCount:
    """What the memory plan needs of a model, read from its meta-device build."""

    params: int
    trainable: int
    weight_bytes: int  # every parameter, in its own dtype
    trainable_bytes: int
    dtypes: dict[str, int]  # dtype name -> parameters
    blocks: int  # transformer blocks (FSDP units)
    largest_block: int  # parameters of the largest block
    largest_block_bytes: int  # ... in their own dtype
    largest_block_trainable: int  # trainable parameters of the block with the most of them
    root: int  # parameters outside every block (FSDP's root unit)
    root_bytes: int
    autocast_trainable: int  # fp32 matmul weights that train (autocast caches their bf16 copy)
    autocast_frozen: int  # fp32 frozen matmul weights in blocks that train (their bf16 copy is saved)
    groups: tuple[BlockGroup, ...]
    conv_elements: int  # output elements per sample of the convolutions outside the blocks

    @property
    def notes(self) -> list[str]:
        """What the activation estimate leaves out."""
        unknown = [g for g in self.groups if g.tokens is None]
        return [f"{g.layers} {g.block} blocks: tokens unknown, activations not estimated" for g in unknown]


def count_model(model: nn.Module, parts: list[Part], image_size: int | None = None) -> ModelCount:
    """Count a (meta-device) model. ``parts`` are in the order data flows through them, first match wins: a
    block inside a part's module is of that part and sees its tokens; blocks of no part have unknown tokens.
    ``image_size``: the image side, for the convolutions outside the blocks (none counted without it)."""
    parameters = list(model.parameters())  # a tied parameter once
    dtypes: dict[str, int] = {}
    for p in parameters:
        name = str(p.dtype).removeprefix("torch.")
        dtypes[name] = dtypes.get(name, 0) + p.numel()
    classes = block_classes(model)
    blocks = [m for m in model.modules() if classes and isinstance(m, classes)]
    inside = {id(p) for block in blocks for p in block.parameters()}
    root = [p for p in parameters if id(p) not in inside]
    trainable = [p for p in parameters if p.requires_grad]
    return ModelCount(
        params=numel(parameters),
        trainable=numel(trainable),
        weight_bytes=nbytes(parameters),
        trainable_bytes=nbytes(trainable),
        dtypes=dtypes,
        blocks=len(blocks),
        largest_block=max((numel(b.parameters()) for b in blocks), default=0),
        largest_block_bytes=max((nbytes(b.parameters()) for b in blocks), default=0),
        largest_block_trainable=max((numel(trainable_of(b)) for b in blocks), default=0),
        root=numel(root),
        root_bytes=nbytes(root),
        autocast_trainable=numel(fp32_matmul_weights([model], trains=True)),
        autocast_frozen=numel(fp32_matmul_weights([b for b in blocks if trainable_of(b)], trains=False)),
        groups=block_groups(model, blocks, parts),
        conv_elements=conv_elements(model, blocks, image_size),
    )


def numel(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() for t in tensors)


def nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def trainable_of(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def fp32_matmul_weights(modules: list[nn.Module], trains: bool) -> list[torch.Tensor]:
    """The fp32 weights of the matmuls (linear, convolution, attention projections) in ``modules`` that train
    (or do not), each once: autocast casts them to bf16."""
    found = {
        id(w): w
        for module in modules
        for m in module.modules()
        for w in matmul_weights(m)
        if isinstance(w, nn.Parameter) and w.requires_grad == trains and w.dtype == torch.float32
    }
    return list(found.values())


def matmul_weights(module: nn.Module) -> list[torch.Tensor]:
    """The weights of ``module``'s own matmuls."""
    if isinstance(module, nn.Linear | nn.modules.conv._ConvNd):
        return [module.weight]
    if isinstance(module, nn.MultiheadAttention):
        names = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
        return [w for w in (getattr(module, n, None) for n in names) if w is not None]
    return []


def block_groups(model: nn.Module, blocks: list[nn.Module], parts: list[Part]) -> tuple[BlockGroup, ...]:
    """The blocks grouped by (part, class), each group's shape read from its first block. Backward reaches a
    part if it, or a part before it, has a parameter that trains (blocks of no part: if anything trains)."""
    members = {name: {id(m) for m in module.modules()} for name, module, _ in parts}
    tokens = {name: seq for name, _, seq in parts}
    backward, trains = {}, False
    for name, module, _ in parts:
        trains = trains or bool(trainable_of(module))
        backward[name] = trains
    grouped: dict[tuple[str, type], list[nn.Module]] = {}
    for block in blocks:
        part = next((name for name, ids in members.items() if id(block) in ids), "blocks")
        grouped.setdefault((part, type(block)), []).append(block)
    anything_trains = bool(trainable_of(model))
    groups = []
    for (part, cls), group in grouped.items():
        shape = block_shape(group[0])
        seq, reached = tokens.get(part), backward.get(part, anything_trains)
        groups.append(BlockGroup(part, cls.__name__, len(group), **shape, tokens=seq, backward=reached))
    return tuple(groups)


def block_shape(block: nn.Module) -> dict[str, Any]:
    """Width, heads, MLP width and kind, attention and norm count of one transformer block, from its layers:
    h is the first norm's width (else the first linear layer's input), I the input width of the linear layer
    that maps back to h outside attention (a gated MLP has two layers into I)."""
    norms = [
        m
        for m in block.modules()
        if "norm" in type(m).__name__.lower()
        and getattr(m, "weight", None) is not None
        and m.weight.dim() == 1
    ]
    linears = [m for name, m in block.named_modules() if isinstance(m, nn.Linear) and "lora_" not in name]
    hidden = norms[0].weight.numel() if norms else (linears[0].in_features if linears else 0)
    attentions = attention_modules(block)
    in_attention = {id(m) for a in attentions for m in a.modules()}
    mlp_linears = [m for m in linears if id(m) not in in_attention]
    down = [m.in_features for m in mlp_linears if m.out_features == hidden and m.in_features != hidden]
    inner = max(down, default=4 * hidden)
    into = sum(1 for m in mlp_linears if m.in_features == hidden and m.out_features == inner)
    return {
        "hidden": hidden,
        "heads": attention_heads(attentions, hidden),
        "mlp": inner,
        "gated": into >= 2,
        "attentions": max(1, len(attentions)),
        "norms": len(norms) or 2,
        "composite_norms": sum(1 for m in norms if not isinstance(m, FUSED_NORMS)),
    }


def attention_modules(block: nn.Module) -> list[nn.Module]:
    """The outermost attention sublayers of ``block`` (torch's MultiheadAttention, a transformers *Attention)."""
    found: list[nn.Module] = []
    inside: set[int] = set()
    for m in block.modules():
        attention = isinstance(m, nn.MultiheadAttention) or type(m).__name__.lower().endswith("attention")
        if m is not block and attention and id(m) not in inside:
            found.append(m)
            inside |= {id(sub) for sub in m.modules()}
    return found


def attention_heads(attentions: list[nn.Module], hidden: int) -> int:
    """The first attention sublayer's heads, from its attributes or its config (else 64-wide heads)."""
    for attention in attentions:
        config = getattr(attention, "config", None)
        candidates = [
            getattr(attention, key, None) for key in ("num_heads", "num_attention_heads", "n_heads")
        ]
        candidates += [getattr(config, key, None) for key in ("num_attention_heads", "num_heads")]
        heads = next((n for n in candidates if isinstance(n, int)), None)
        if heads is not None:
            return heads
        head_dim = getattr(attention, "head_dim", None)
        if isinstance(head_dim, int) and head_dim:
            return max(1, hidden // head_dim)
    return max(1, hidden // 64)


def conv_elements(model: nn.Module, blocks: list[nn.Module], image_size: int | None) -> int:
    """Output elements per sample of the 2-d convolutions outside the blocks (a rough count: the side follows
    the convolutions in module order, restarting at the image side at a convolution that reads pixels)."""
    if image_size is None:
        return 0
    inside = {id(m) for block in blocks for m in block.modules()}
    side, total = image_size, 0
    for m in model.modules():
        if not isinstance(m, nn.Conv2d) or id(m) in inside:
            continue
        if m.in_channels <= 9:  # one to three RGB frames: this convolution reads pixels
            side = image_size
        pad = m.padding[0] if isinstance(m.padding, tuple) else 0
        side = (side + 2 * pad - m.dilation[0] * (m.kernel_size[0] - 1) - 1) // m.stride[0] + 1
        total += m.out_channels * max(side, 0) ** 2
    return total
