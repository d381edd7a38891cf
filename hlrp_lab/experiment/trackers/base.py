"""A tracker (one dashboard of one session) and ``Trackers``, all of a session's, as the loop sees them."""

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from loguru import logger

from hlrp_lab.lib.scrub import error_line, secret_values


class Tracker(ABC):
    """Logs one session's scalars and pictures somewhere. ``Tracker(spec, layout, trial, session)`` opens it
    (``spec`` with its secrets masked); any error there means it did not open."""

    name: ClassVar[str]  # its name in ``meta.trackers``
    fix: ClassVar[str]  # what to do when it does not open

    @abstractmethod
    def start(self, step: int) -> None:
        """Training starts (again) after ``step``: what was logged after it is to be replaced."""

    @abstractmethod
    def log(self, step: int, scalars: dict[str, float], pictures: dict[str, Path]) -> None:
        """Scalars and pictures (name -> PNG file) of ``step``."""

    @abstractmethod
    def close(self, final: dict[str, float] | None) -> None:
        """The run's final metrics (None: it failed) and the end of the tracker."""


class Trackers:
    """A session's open trackers (none: it does nothing). A tracker that fails mid-run is warned about once and
    dropped: training goes on without that dashboard."""

    def __init__(self, trackers: list[Tracker], picture_prefix: str):
        self.trackers = trackers
        self.picture_prefix = picture_prefix  # picture files are {prefix}{name}.png

    def start(self, step: int) -> None:
        """Called once, after a resumed session restored ``step`` (0 for a fresh one)."""
        self.each("start", lambda tracker: tracker.start(step))

    def log(self, step: int, row: dict[str, float], pictures: list[Path]) -> None:
        """A logged row (its ``step`` key is the x axis) and the PNG pictures drawn at ``step``."""
        scalars = scalars_of(row)
        named = {path.stem.removeprefix(self.picture_prefix): path for path in pictures}
        self.each(f"step {step}", lambda tracker: tracker.log(step, scalars, named))

    def close(self, final: dict[str, float] | None) -> None:
        """Close every tracker with the final metrics (None after a failure); never raises."""
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            close_quietly(tracker, None if final is None else scalars_of(final))

    def each(self, when: str, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as error:  # noqa: BLE001 (a dashboard is not worth the run)
                logger.warning(
                    f"tracker {tracker.name} failed at {when} and logs no more in this session: "
                    f"{error_line(error, secret_values())}"
                )
                self.trackers.remove(tracker)
                close_quietly(tracker, None)


def scalars_of(row: dict[str, float]) -> dict[str, float]:
    """A row's values but its ``step`` (the x axis, not a curve)."""
    return {key: value for key, value in row.items() if key != "step"}


def close_quietly(tracker: Tracker, final: dict[str, float] | None) -> None:
    try:
        tracker.close(final)
    except Exception as error:  # noqa: BLE001 (closing after a failure must not hide the failure)
        logger.warning(f"tracker {tracker.name} did not close: {error_line(error, secret_values())}")
