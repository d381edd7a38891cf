"""Loguru to the console (through tqdm, so progress bars stay intact) and to a run's log file."""

import os
import sys
from pathlib import Path

from loguru import logger
from tqdm import tqdm

FORMAT = "{time:YYYY-MM-DD HH:mm:ss} | {level: <7} | {message}"


def setup_logger(log_file: Path | None = None) -> None:
    """Log at ``LOG_LEVEL`` (default INFO) to stderr and, if given, append to ``log_file``."""
    level = os.environ.get("LOG_LEVEL", "INFO")
    logger.remove()
    logger.add(
        lambda msg: tqdm.write(msg, end="", file=sys.stderr), level=level, format=FORMAT, colorize=False
    )
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        logger.add(log_file, level=level, format=FORMAT)
