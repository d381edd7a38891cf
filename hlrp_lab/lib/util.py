"""Small helpers shared by the control layer: run directories, atomic writes, git, time."""

import json
import os
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

RUN_SUBDIRS = ("info", "graph", "log", "model")


def timestamp() -> str:
    return datetime.now().strftime("%Y_%m_%d_%H%M%S")


def make_run_dir(root: Path, spec_name: str, ts: str) -> Path:
    """Create ``root/{spec_name}_{ts}``; a run started in the same second gets a ``_1``, ``_2``... suffix."""
    root.mkdir(parents=True, exist_ok=True)
    for suffix in ["", *(f"_{i}" for i in range(1, 1000))]:
        run_dir = root / f"{spec_name}_{ts}{suffix}"
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        for sub in RUN_SUBDIRS:
            (run_dir / sub).mkdir()
        return run_dir
    raise FileExistsError(f"no free run directory for {spec_name}_{ts} under {root}")


def atomic_write_text(path: Path, text: str) -> None:
    """Write then rename, so a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def git_sha() -> str | None:
    """The lab's git commit, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()
