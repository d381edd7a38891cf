"""A session's pictures (``Stage.draw``): at its `last` evaluation, copied to `best` when the metric improved,
and of the best checkpoint in `eval` mode."""

import shutil
from pathlib import Path

from loguru import logger

from hlrp_lab.lib.layout import RunLayout
from hlrp_lab.lib.util import write_json
from hlrp_lab.stages.base import Stage


class Pictures:
    """Draws the stage's pictures into the run's ``graph/`` after each evaluation (rank 0)."""

    def __init__(self, layout: RunLayout, trial: int, session: int):
        self.layout, self.trial, self.session = layout, trial, session

    def draw(self, stage: Stage, step: int, best: bool) -> list[Path]:
        """The `last` pictures of this evaluation, also kept as `best` when ``best``."""
        paths = self.draw_as(stage, step, "last")
        if best:
            self.keep_as_best(step, paths)
        return paths

    def draw_as(self, stage: Stage, step: int, tag: str) -> list[Path]:
        """The ``tag`` pictures of the evaluation at ``step``; none if drawing failed: a picture is not worth a
        training run, so that is a warning (and the index says that ``step`` has none)."""
        for old in self.layout.pictures(self.trial, self.session, tag):
            old.unlink()  # a picture the stage no longer draws must not pass for this step's
        try:
            paths = stage.draw(self.layout.graph, self.layout.picture_prefix(self.trial, self.session, tag))
        except Exception as error:  # noqa: BLE001 (any bug in drawing code)
            logger.warning(f"pictures at step {step} not drawn: {type(error).__name__}: {error}")
            paths = []
        self.write_index(tag, step, paths)
        return paths

    def keep_as_best(self, step: int, paths: list[Path]) -> None:
        for old in self.layout.pictures(self.trial, self.session, "best"):
            old.unlink()
        last = self.layout.picture_prefix(self.trial, self.session, "last")
        best = [
            self.layout.picture(self.trial, self.session, "best", path.stem.removeprefix(last))
            for path in paths
        ]
        for source, target in zip(paths, best, strict=True):
            shutil.copyfile(source, target)
        self.write_index("best", step, best)

    def write_index(self, tag: str, step: int, paths: list[Path]) -> None:
        index = {"step": step, "pictures": [path.name for path in paths]}
        write_json(self.layout.picture_index(self.trial, self.session, tag), index)
