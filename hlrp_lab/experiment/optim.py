"""Optimizer and learning-rate schedule from the spec's ``optim`` block."""

import inspect
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from hlrp_lab.lib.errors import SpecError

SCHEDULE_KEYS = ("name", "warmup_steps", "min_lr_ratio")


def optimizer_class(optim: dict) -> type[torch.optim.Optimizer]:
    cls = getattr(torch.optim, optim["name"], None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        names = sorted(n for n, c in vars(torch.optim).items() if isinstance(c, type) and n[0].isupper())
        raise SpecError(
            f"optim.name: unknown optimizer {optim['name']!r}; torch.optim has: {', '.join(names)}"
        )
    return cls


def optimizer_kwargs(optim: dict) -> dict:
    """The ``optim`` keys that go to the optimizer's constructor, checked against its signature."""
    cls = optimizer_class(optim)
    kwargs = {k: v for k, v in optim.items() if k not in SCHEDULE_KEYS}
    accepted = inspect.signature(cls).parameters
    for key in kwargs:
        if key not in accepted:
            raise SpecError(f"optim.{key}: not an argument of torch.optim.{cls.__name__}")
    return kwargs


def build_optimizer(params: Iterable[torch.nn.Parameter], optim: dict) -> torch.optim.Optimizer:
    return optimizer_class(optim)(params, **optimizer_kwargs(optim))


def build_scheduler(optimizer: torch.optim.Optimizer, optim: dict, max_step: int) -> LRScheduler:
    """Linear warmup, then cosine decay to lr * min_lr_ratio at max_step."""
    warmup = min(optim["warmup_steps"], max_step - 1)
    eta_min = optim["lr"] * optim["min_lr_ratio"]
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, max_step - warmup), eta_min=eta_min)
    if warmup == 0:
        return cosine
    linear = LinearLR(optimizer, start_factor=1 / (warmup + 1), total_iters=warmup)
    return SequentialLR(optimizer, [linear, cosine], milestones=[warmup])
