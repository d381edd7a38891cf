"""Trackers (``meta.trackers``): TensorBoard and Weights & Biases hear a session's logged rows and pictures (rank 0).

Their libraries are imported only when a tracker opens: a run without trackers imports neither."""

from hlrp_lab.experiment.trackers.base import Tracker, Trackers, close_quietly
from hlrp_lab.experiment.trackers.tensorboard import TensorBoardTracker
from hlrp_lab.experiment.trackers.wandb import WandbTracker
from hlrp_lab.lib.errors import RunError, SpecError
from hlrp_lab.lib.layout import RunLayout
from hlrp_lab.lib.scrub import error_line, mask_spec, secret_values

TRACKERS: dict[str, type[Tracker]] = {tracker.name: tracker for tracker in (TensorBoardTracker, WandbTracker)}

__all__ = ["TRACKERS", "Tracker", "Trackers", "open_trackers"]


def open_trackers(spec: dict, layout: RunLayout, trial: int, session: int) -> Trackers:
    """Open the trackers ``spec["meta"]["trackers"]`` names for a session (none: a ``Trackers`` that does
    nothing); one that does not open closes those already open and raises a one-line ``RunError``."""
    names = spec["meta"].get("trackers", [])
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        raise SpecError(f"meta.trackers: unknown tracker {unknown[0]!r}; use one of {sorted(TRACKERS)}")
    config = mask_spec(spec)
    opened: list[Tracker] = []
    for name in names:
        try:
            opened.append(TRACKERS[name](config, layout, trial, session))
        except Exception as error:
            for tracker in opened:
                close_quietly(tracker, None)
            line = error_line(error, secret_values())
            raise RunError(f"meta.trackers: {name} did not open ({line}); {TRACKERS[name].fix}") from error
    return Trackers(opened, layout.picture_prefix(trial, session, "last"))
