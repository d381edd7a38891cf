"""The torch device a spec's ``device`` key names."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def pick_device(name: str) -> "torch.device":
    """``auto``: CUDA when available, else the CPU; otherwise the named device."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)
