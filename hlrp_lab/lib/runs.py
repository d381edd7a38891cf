"""Run directories under data/: their names, their saved specs, the newest run of a spec (no torch)."""

import json
import re
from dataclasses import dataclass
from pathlib import Path

from hlrp_lab.lib.errors import SpecError

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


@dataclass(frozen=True)
class RunReference:
    """A trained model named by a spec key: its run directory, spec name, weights file and saved spec."""

    run_dir: Path
    spec_name: str
    weights: Path

    def spec(self) -> dict:
        return json.loads(saved_spec_path(self.run_dir, self.spec_name).read_text())[self.spec_name]


def resolve_reference(reference: str, key: str, root: Path = DATA_ROOT) -> RunReference:
    """``reference`` as a run: ``latest:<spec_name>`` (its newest run under ``root``), a run directory (its
    best trial's session-0 ``best`` weights) or a ``.safetensors`` file of a run. ``key`` names the spec key
    in errors."""
    forms = "a run directory, a .safetensors file of a run, or latest:<spec_name>"
    if reference.startswith("latest:"):
        spec_name = reference.removeprefix("latest:")
        run_dir = newest_run(spec_name, root)
        if run_dir is None:
            raise SpecError(f"{key}: no run of {spec_name!r} under {root}/; train it first, or give {forms}")
        return RunReference(run_dir, spec_name, best_weights(run_dir, spec_name, key))
    path = Path(reference)
    run_dir = path.parent.parent if path.suffix == ".safetensors" else path
    spec_name = run_dir_spec_name(run_dir.name)
    if not path.exists() or spec_name is None or not saved_spec_path(run_dir, spec_name).is_file():
        raise SpecError(f"{key}: {reference!r} is not {forms}")
    weights = path if path.suffix == ".safetensors" else best_weights(run_dir, spec_name, key)
    return RunReference(run_dir, spec_name, weights)


def best_weights(run_dir: Path, spec_name: str, key: str) -> Path:
    """The ``best`` weights of session 0 of the run's best trial (the first row of a search's table)."""
    table = run_dir / "info" / f"{spec_name}_experiment.csv"
    trial = int(table.read_text().splitlines()[1].split(",")[0]) if table.is_file() else 0
    weights = run_dir / "model" / f"{spec_name}_t{trial}_s0_best.safetensors"
    if not weights.is_file():
        raise SpecError(f"{key}: {run_dir} has no {weights.name}; name a weights file instead")
    return weights
