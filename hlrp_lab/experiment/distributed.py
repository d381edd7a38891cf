"""A session on several ranks: the process group, and the stage's model under DDP or FSDP2.

Everything that communicates is PyTorch's own: torchrun starts the ranks, ``DistributedDataParallel``
all-reduces gradients, ``fully_shard`` (FSDP2) shards parameters per transformer block, and
``torch.distributed.checkpoint`` writes sharded checkpoints (``checkpoint.ShardedLast``).
"""

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from loguru import logger
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    CheckpointWrapper,
    apply_activation_checkpointing,
    checkpoint_wrapper,
)
from torch.distributed.checkpoint.state_dict import get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.parent import die_with_parent
from hlrp_lab.lib.weights import WRAPPER_PREFIX
from hlrp_lab.lib.world import World
from hlrp_lab.stages import STAGES
from hlrp_lab.stages.base import Stage

TORCH_BLOCKS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


@contextlib.contextmanager
def process_group(spec: dict) -> Iterator[World]:
    """Join the process group of the ranks torchrun launched (NCCL for CUDA tensors, gloo for CPU ones), with
    ``train.distributed.timeout_s`` on every collective; leave it at the end. One process: nothing to join."""
    world = World.launched()
    if not world.distributed or dist.is_initialized():
        yield World.current()
        return
    die_with_parent()  # a launcher killed with SIGKILL leaves no rank behind
    cuda = torch.cuda.is_available() and spec["train"]["device"] != "cpu"
    if cuda:
        torch.cuda.set_device(world.local_rank)
    timeout = timedelta(seconds=spec["train"]["distributed"]["timeout_s"])
    dist.init_process_group("cuda:nccl,cpu:gloo" if cuda else "gloo", timeout=timeout)
    try:
        yield World.current()
        dist.barrier()  # no rank leaves while another still waits on it (e.g. rank 0 writing the last files)
    finally:
        dist.destroy_process_group()


def strategy_of(spec: dict, world: World) -> str:
    """``train.distributed.strategy`` on ``world``: none on one process whatever the spec says (so a spec runs
    unchanged on 1 and N ranks), auto resolved by the stage on several."""
    strategy = spec["train"]["distributed"]["strategy"]
    if not world.distributed:
        return "none"
    return STAGES.config_class(spec["stage"], "stage").auto_strategy(spec) if strategy == "auto" else strategy


class StageSteps(nn.Module):
    """The stage's training step and evaluation as one module's forward (``batch`` None evaluates), so that
    DDP and FSDP see every use of the model however the stage calls it (``model(...)``, ``model.loss(...)``)."""

    def __init__(self, stage: Stage):
        super().__init__()
        self.model = stage.model
        self.stage = [stage]  # in a list: not a submodule

    def forward(self, batch: dict[str, Any] | None) -> Any:
        if batch is None:
            return self.stage[0].evaluate()
        return self.stage[0].train_step(batch)


class Runner:
    """The stage's steps wrapped for ``strategy``: call it with a batch to train, with None to evaluate."""

    def __init__(self, stage: Stage, spec: dict, world: World):
        self.strategy = strategy_of(spec, world)
        train = spec["train"]
        if train["activation_checkpointing"]:
            checkpoint_blocks(stage.model)
        self.module: nn.Module = StageSteps(stage)
        device = next(stage.model.parameters()).device
        if self.strategy == "ddp":
            self.module = DistributedDataParallel(
                self.module,
                device_ids=[device.index] if device.type == "cuda" else None,
                forward_sync_buffers=False,  # buffers (codebook usage, action ranges) are kept alike by their owners
                find_unused_parameters=train["distributed"]["find_unused_parameters"],
            )
        elif self.strategy == "fsdp":
            shard(self.module, device, train, world)
        if world.distributed:
            logger.info(f"rank {world.rank}/{world.size} (pid {os.getpid()}): {self.strategy}")

    def __call__(self, batch: dict[str, Any] | None) -> Any:
        return self.module(batch)

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp"

    def parameters(self) -> list[nn.Parameter]:
        """The trainable parameters, as the optimizer must see them (FSDP's are sharded DTensors)."""
        return [p for p in self.module.parameters() if p.requires_grad]

    @contextlib.contextmanager
    def gradient_sync(self, enabled: bool) -> Iterator[None]:
        """Reduce gradients across ranks in this backward pass only if ``enabled`` (the last micro-batch of
        an accumulated step)."""
        if enabled or self.strategy == "none":
            yield
        elif self.strategy == "ddp":
            with self.module.no_sync():
                yield
        else:
            fsdp: FSDPModule = self.module  # type: ignore[assignment]
            fsdp.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                fsdp.set_requires_gradient_sync(True)


def full_weights(root: nn.Module, model: nn.Module, skip: set[str] | None = None) -> dict[str, torch.Tensor]:
    """The whole weights of ``model`` inside FSDP-sharded ``root``, but those named in ``skip``, gathered to
    rank 0's CPU one tensor at a time (a collective: every rank calls it; the others get an empty dict), named
    as ``model`` names them, each tied parameter once (as ``safetensors.torch.load_model`` expects)."""
    skip = skip or set()
    prefix = next(name for name, module in root.named_modules() if module is model)
    every = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    aliases = every - {name for name, _ in model.named_parameters()}
    aliases = {name.replace(WRAPPER_PREFIX, "") for name in aliases}
    main = World.current().main
    gathered = {}
    for name, tensor in get_model_state_dict(root).items():  # this rank's shards: nothing is copied yet
        name = name.removeprefix(f"{prefix}.") if prefix else name
        if name in skip or name in aliases:
            continue
        if isinstance(tensor, DTensor) and tensor.device.type != tensor.device_mesh.device_type:
            # offloaded to the CPU: gather on the mesh's device
            tensor = tensor.to(tensor.device_mesh.device_type)
        full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
        if main:
            gathered[name] = full.detach().cpu()
    return gathered


def block_classes(model: nn.Module) -> tuple[type[nn.Module], ...]:
    """The transformer block classes of ``model``: torch's transformer layers and the modules transformers says
    must not be split (``_no_split_modules``), each widened to the layer of the ``nn.ModuleList`` that holds it
    (for some models the no-split module is the attention inside the layer that is the block)."""
    names = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    layer_of: dict[int, nn.Module] = {}  # a module -> the innermost ModuleList item holding it
    for layers in model.modules():
        if isinstance(layers, nn.ModuleList):
            for layer in layers:
                layer_of.update((id(m), layer) for m in layer.modules())
    found = {
        type(layer_of.get(id(m), m))
        for m in model.modules()
        if isinstance(m, TORCH_BLOCKS) or type(m).__name__ in names
    }
    return tuple(sorted(found, key=lambda cls: cls.__name__))


def checkpoint_blocks(model: nn.Module) -> None:
    """Recompute each transformer block's activations in backward (torch's non-reentrant checkpoint)."""
    classes = block_classes(model)
    if not classes:
        logger.warning(
            "train.activation_checkpointing: this model has no transformer blocks; nothing to recompute"
        )
        return
    wrapper = partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    apply_activation_checkpointing(
        model, checkpoint_wrapper_fn=wrapper, check_fn=lambda m: isinstance(m, classes)
    )


def outermost_blocks(module: nn.Module) -> list[nn.Module]:
    """The transformer blocks of ``module``, each as called: inside its activation checkpoint wrapper if any."""
    classes = block_classes(module)
    wrapped = {id(m._checkpoint_wrapped_module) for m in module.modules() if isinstance(m, CheckpointWrapper)}
    return [
        m
        for m in module.modules()
        if isinstance(m, CheckpointWrapper) or (isinstance(m, classes) and id(m) not in wrapped)
    ]


def shard(module: nn.Module, device: torch.device, train: dict, world: World) -> None:
    """FSDP2: each transformer block is its own unit, the rest belongs to the root; bf16 parameters with fp32
    gradient reduction under bf16 precision on CUDA; parameters and optimizer states on the CPU with
    ``cpu_offload``."""
    mesh = init_device_mesh(device.type, (world.size,))
    options: dict[str, Any] = {"mesh": mesh}
    if device.type == "cuda" and train["precision"] in ("auto", "bf16"):
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if train["distributed"]["cpu_offload"]:
        if device.type != "cuda":
            raise SpecError(
                "train.distributed.cpu_offload: moves a GPU's parameters and optimizer states to the CPU, and "
                "this run trains on the CPU already; set it to false"
            )
        options["offload_policy"] = CPUOffloadPolicy()
    blocks = outermost_blocks(module)
    for block in reversed(blocks):  # bottom-up, as fully_shard expects of nested units
        fully_shard(block, **options)
    fully_shard(module, **options)
    logger.info(f"fsdp: {len(blocks)} blocks sharded over {world.size} ranks")
