"""Weights & Biases: one run per session, grouped by run directory (``group``) and trial (``job_type``)."""

import os
import secrets
from pathlib import Path

from hlrp_lab.experiment.trackers.base import Tracker
from hlrp_lab.lib.layout import RunLayout
from hlrp_lab.lib.util import atomic_write_text

PROJECT = "hlrp-lab"  # unless WANDB_PROJECT names one


class WandbTracker(Tracker):
    """Scalars and pictures (``pictures/{name}``) at their step, the spec as config, final metrics as summary.
    The run id is kept in the run directory (``RunLayout.wandb_id``), so ``train@RUN_DIR`` continues the same W&B run;
    W&B reads its own environment (``WANDB_MODE``, ``WANDB_ENTITY``, ``WANDB_API_KEY``), which the lab never
    writes anywhere."""

    name = "wandb"
    fix = (
        "run `wandb login` (or set WANDB_API_KEY), or set WANDB_MODE=offline and `wandb sync` later, "
        "or drop wandb from meta.trackers"
    )

    def __init__(self, spec: dict, layout: RunLayout, trial: int, session: int):
        import wandb

        self.wandb = wandb
        stem = layout.stem(trial, session)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", PROJECT),
            group=layout.run_dir.name,
            job_type=layout.stem(trial),
            name=stem,
            id=run_id(layout.wandb_id(trial, session)),
            resume="allow",
            dir=layout.log,  # W&B writes into a `wandb/` of its dir: layout.wandb
            config=spec,
        )

    def start(self, step: int) -> None:
        """Nothing to do: a resumed W&B run keeps its steps and ignores those logged again."""

    def log(self, step: int, scalars: dict[str, float], pictures: dict[str, Path]) -> None:
        # a resumed online run has these steps already (the same values: resume is exact)
        if step < self.run.starting_step:
            return
        images = {f"pictures/{name}": self.wandb.Image(str(path)) for name, path in pictures.items()}
        self.run.log({**scalars, **images}, step=step)

    def close(self, final: dict[str, float] | None) -> None:
        if final is not None:
            self.run.summary.update(final)
        self.run.finish(exit_code=0 if final is not None else 1)


def run_id(path: Path) -> str:
    """The W&B run id of a session, kept in ``path``: drawn at random for its first attempt (two runs started
    in the same second on two machines must not share one), the same for every later one (resume)."""
    if path.is_file():
        return path.read_text().strip()
    new = secrets.token_hex(8)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, new + "\n")
    return new
