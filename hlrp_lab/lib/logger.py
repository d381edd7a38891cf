"""Loguru to the console (through tqdm, so progress bars stay intact) and to a run's log file."""

import os
import sys
import warnings
from pathlib import Path

from loguru import logger
from tqdm import tqdm

FORMAT = "{time:YYYY-MM-DD HH:mm:ss} | {level: <7} | {message}"


def setup_logger(log_file: Path | None = None, quiet: bool = False) -> None:
    """Log at ``LOG_LEVEL`` (default INFO) to stderr (warnings and errors only if ``quiet``: the ranks other
    than 0 of a distributed run) and, if given, append to ``log_file``; Python warnings are logged too, in the
    same format."""
    warnings.showwarning = log_warning
    level = os.environ.get("LOG_LEVEL", "INFO")
    logger.remove()
    logger.add(
        lambda msg: tqdm.write(msg, end="", file=sys.stderr),
        level="WARNING" if quiet else level,
        format=FORMAT,
        colorize=False,
    )
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        logger.add(log_file, level=level, format=FORMAT)


def log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, *_) -> None:
    """``warnings.showwarning``: a Python warning as a WARNING line of the lab's log."""
    logger.warning(f"{category.__name__}: {message} ({filename}:{lineno})")
