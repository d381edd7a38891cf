"""The few collectives the lab itself needs (``World`` says where this process stands): rank 0's objects to
every rank, means of logged values, the first bad step over ranks, partition-free noise, gathered rows.

Without an initialized process group every function here is the one-process identity, so the same code runs
on one CPU, one GPU or many ranks.
"""

from typing import TypeVar

import torch
import torch.distributed as dist

from hlrp_lab.lib.world import World

T = TypeVar("T")


def broadcast_from_main(value: T) -> T:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not World.current().distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if World.current().distributed:
        dist.barrier()


def mean_over_ranks(values: dict[str, float | torch.Tensor]) -> dict[str, float]:
    """Each scalar averaged over the ranks, in one all_reduce on the CPU (every rank passes the same keys; the
    default group's backend is ``cuda:nccl,cpu:gloo`` on GPUs); one process: the values as floats."""
    if not values:
        return {}
    stacked = torch.stack(
        [torch.as_tensor(v, dtype=torch.float64).reshape(()).cpu() for v in values.values()]
    )
    if World.current().distributed:
        order = sorted(range(len(values)), key=list(values).__getitem__)  # the same on every rank
        reduced = stacked[order]
        dist.all_reduce(reduced)
        stacked[order] = reduced / dist.get_world_size()
    return dict(zip(values, stacked.tolist(), strict=True))


def first_over_ranks(step: int) -> int:
    """The smallest of the ranks' ``step``s that are set (>= 0), or -1 if no rank has one."""
    if not World.current().distributed:
        return step
    unset = torch.iinfo(torch.long).max
    tensor = torch.tensor([step if step >= 0 else unset], dtype=torch.long)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    first = int(tensor.item())
    return -1 if first == unset else first


def any_over_ranks(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (one all_reduce of a CPU integer)."""
    if not World.current().distributed:
        return flag
    tensor = torch.tensor([int(flag)], dtype=torch.long)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def rank_slice_randn(like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise shaped like ``like`` (B, ...), drawn as this rank's rows of the noise of the
    whole batch over every rank: with the same seed on every rank, each sample gets the noise it would get in
    one process at the same global batch, so 1 and N ranks train alike."""
    world = World.current()
    if not world.distributed:
        return torch.randn_like(like)
    batch = like.shape[0]
    noise = torch.randn((world.size * batch, *like.shape[1:]), dtype=like.dtype, device=like.device)
    return noise[world.rank * batch : (world.rank + 1) * batch]


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``tensor`` (same shape on each rank), in rank order."""
    if not World.current().distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over ranks, in place."""
    if World.current().distributed:
        dist.all_reduce(tensor)
    return tensor
