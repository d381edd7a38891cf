"""TensorBoard: one event folder per session (``RunLayout.tensorboard``: under the run's ``log/tb/``)."""

import json
from pathlib import Path

import numpy as np

from hlrp_lab.experiment.trackers.base import Tracker
from hlrp_lab.lib.layout import RunLayout

FLUSH_SECS = 10  # what a killed run can lose


class TensorBoardTracker(Tracker):
    """Scalars under their names, pictures as images ``pictures/{name}``, the spec as text, final metrics as
    ``final/{name}`` at the last step. A resumed session purges what its crashed run logged after the
    checkpoint (``purge_step``), so every step appears once."""

    name = "tensorboard"
    fix = "make the run's log/ folder writable or drop tensorboard from meta.trackers"

    def __init__(self, spec: dict, layout: RunLayout, trial: int, session: int):
        self.spec = spec
        self.folder = layout.tensorboard(trial, session)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.writer = None
        self.step = 0

    def start(self, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.folder), purge_step=step + 1, flush_secs=FLUSH_SECS)
        self.writer.add_text("spec", code_block(json.dumps(self.spec, indent=2)), step)
        self.step = step

    def log(self, step: int, scalars: dict[str, float], pictures: dict[str, Path]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        for name, path in pictures.items():
            self.writer.add_image(f"pictures/{name}", read_rgb(path), step, dataformats="HWC")
        self.step = step

    def close(self, final: dict[str, float] | None) -> None:
        if self.writer is None:
            return
        for key, value in (final or {}).items():
            self.writer.add_scalar(f"final/{key}", value, self.step)
        self.writer.close()


def code_block(text: str) -> str:
    """``text`` as a Markdown code block (TensorBoard renders text as Markdown)."""
    return "\n".join(f"    {line}" for line in text.splitlines())


def read_rgb(path: Path) -> np.ndarray:
    """A PNG as (H, W, 3) uint8."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
