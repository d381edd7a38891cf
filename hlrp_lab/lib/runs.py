"""Run directories under data/: their names, their saved specs, the newest run of a spec (no torch)."""

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def experiment_table_path(run_dir: Path, spec_name: str) -> Path:
    """A search's table of trials (CSV; a Parquet copy beside it)."""
    return run_dir / "info" / f"{spec_name}_experiment.csv"


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
    """A trained model named by a spec key: its run directory, spec name, trial and weights file."""

    run_dir: Path
    spec_name: str
    trial: int
    weights: Path

    def spec(self) -> dict:
        """The spec the weights were trained with: the trial's (a search's trials differ from its spec)."""
        path = self.run_dir / "info" / f"{self.spec_name}_t{self.trial}_spec.json"
        return json.loads(path.read_text())[self.spec_name]

    @property
    def stem(self) -> str:
        """``{spec_name}_t{trial}``: the name stem of the trial's files."""
        return f"{self.spec_name}_t{self.trial}"


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
        return best_weights(run_dir, spec_name, key)
    path = Path(reference)
    run_dir = path.parent.parent if path.suffix == ".safetensors" else path
    spec_name = run_dir_spec_name(run_dir.name)
    if not path.exists() or spec_name is None or not saved_spec_path(run_dir, spec_name).is_file():
        raise SpecError(f"{key}: {reference!r} is not {forms}")
    if path.suffix != ".safetensors":
        return best_weights(run_dir, spec_name, key)
    match = re.fullmatch(rf"{re.escape(spec_name)}_t(\d+)_s\d+_\w+\.safetensors", path.name)
    if match is None:
        raise SpecError(f"{key}: {path.name} is not named {spec_name}_t<trial>_s<session>_<tag>.safetensors")
    return RunReference(run_dir, spec_name, int(match[1]), path)


def best_weights(run_dir: Path, spec_name: str, key: str) -> RunReference:
    """The ``best`` weights of session 0 of the run's best trial (the first row of a search's table)."""
    table = experiment_table_path(run_dir, spec_name)
    trial = 0
    if table.is_file():
        with table.open(newline="") as file:
            trial = int(next(csv.DictReader(file))["trial"])
    weights = run_dir / "model" / f"{spec_name}_t{trial}_s0_best.safetensors"
    if not weights.is_file():
        raise SpecError(f"{key}: {run_dir} has no {weights.name}; name a weights file instead")
    return RunReference(run_dir, spec_name, trial, weights)


def local_run_references(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, value) of every string in a spec that names a run of this machine's data/:
    ``latest:<spec_name>`` or a relative path into a run directory, search choices included."""
    if isinstance(node, dict):
        for name, value in node.items():
            yield from local_run_references(value, f"{key}.{name}" if key else name)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from local_run_references(value, f"{key}[{index}]")
    elif isinstance(node, str):
        parts = Path(node).parts
        in_run_dir = (
            len(parts) >= 2 and parts[0] == DATA_ROOT.name and run_dir_spec_name(parts[1]) is not None
        )
        if node.startswith("latest:") or in_run_dir:
            yield key, node
