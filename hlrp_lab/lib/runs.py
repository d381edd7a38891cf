"""Run directories under data/: their names, their saved specs, the newest run of a spec (no torch)."""

import re
from pathlib import Path

DATA_ROOT = Path("data")
RUN_DIR_NAME = re.compile(r"(?P<spec>.+)_(?P<ts>\d{4}_\d{2}_\d{2}_\d{6})(?:_(?P<n>\d+))?")


def saved_spec_path(run_dir: Path, spec_name: str) -> Path:
    """The resolved spec a run saved: ``info/{spec_name}_spec.json``."""
    return run_dir / "info" / f"{spec_name}_spec.json"


def run_dir_spec_name(name: str) -> str | None:
    """The spec name in a run directory's name ``{spec_name}_{timestamp}[_{n}]``; None if it is not one."""
    match = RUN_DIR_NAME.fullmatch(name)
    return match["spec"] if match else None


def newest_run(spec_name: str, root: Path = DATA_ROOT) -> Path | None:
    """The newest ``{spec_name}_{timestamp}[_{n}]`` directory under ``root`` with a saved spec, if any."""
    runs = []
    for path in root.glob(f"{spec_name}_*"):
        match = RUN_DIR_NAME.fullmatch(path.name)
        if match and match["spec"] == spec_name and saved_spec_path(path, spec_name).is_file():
            runs.append((match["ts"], int(match["n"] or 0), path))
    return max(runs)[2] if runs else None
