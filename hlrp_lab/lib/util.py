"""Small helpers shared by the control layer: run directories, atomic writes, git, time."""

import json
import os
import subprocess
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from hlrp_lab.lib.errors import RunError
from hlrp_lab.lib.layout import RunLayout


def timestamp() -> str:
    return datetime.now().strftime("%Y_%m_%d_%H%M%S")


def make_run_dir(root: Path, spec_name: str, ts: str) -> Path:
    """Create ``root/{spec_name}_{ts}`` and its folders (``RunLayout.folders``); a run started in the same
    second gets a ``_1``, ``_2``... suffix."""
    root.mkdir(parents=True, exist_ok=True)
    for suffix in ["", *(f"_{i}" for i in range(1, 1000))]:
        run_dir = root / f"{spec_name}_{ts}{suffix}"
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        for folder in RunLayout(run_dir, spec_name).folders:
            folder.mkdir()
        return run_dir
    raise FileExistsError(f"no free run directory for {spec_name}_{ts} under {root}")


def temp_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: ``.{name}.tmp`` beside it."""
    return path.with_name(f".{path.name}.tmp")


def write_temp(path: Path, write: Callable[[Path], None], advice: str = "free space and run again") -> Path:
    """Call ``write(tmp)`` on ``path``'s temporary file and return it. A write error (disk full, file too large,
    permissions) removes the temporary file and raises a one-line RunError naming ``path``, the error and
    ``advice``; ``path`` itself is not touched."""
    tmp = temp_path(path)
    try:
        write(tmp)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise RunError(f"could not write {path}: {err}; {advice}") from err
    return tmp


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """``write`` into a temporary file, then rename it to ``path``: a reader sees the old file or the whole new
    one, never a part, and a failed write leaves the old file as it was (see ``write_temp``)."""

    def write_file(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    os.replace(write_temp(path, write_file), path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


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
