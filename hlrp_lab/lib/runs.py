"""Run directories under data/: their names, their saved specs, the newest run of a spec (no torch)."""

import csv
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from hlrp_lab.lib.errors import Interrupted, SpecError, first_line
from hlrp_lab.lib.layout import RunLayout
from hlrp_lab.lib.scrub import mask_spec_file, scrub_text, secret_values
from hlrp_lab.lib.util import write_json

DATA_ROOT = Path("data")
RUN_DIR_NAME = re.compile(r"(?P<spec>.+)_(?P<ts>\d{4}_\d{2}_\d{2}_\d{6})(?:_(?P<n>\d+))?")
# A run's state (RunLayout.status): running while it trains (and after a kill), then completed or failed, or
# interrupted: stopped on request with its `last` checkpoints written (lib.stop), to be resumed.
RUNNING, COMPLETED, FAILED, INTERRUPTED = "running", "completed", "failed", "interrupted"
FINGERPRINT = "fingerprint"  # the status file's key for the fingerprint of the run's spec
# Set by `run --nproc-per-node`: a file where rank 0 writes its run directory, so that the launcher can record
# the failure of a rank that could not record it itself.
RUN_DIR_FILE = "HLRP_RUN_DIR_FILE"
# latest:<spec> is the newest completed run that is not a dev run; latest-dev:<spec> lets dev runs count too.
LATEST, LATEST_DEV = "latest:", "latest-dev:"


def write_spec(path: Path, spec_name: str, spec: dict) -> None:
    """Save ``{spec_name: spec}`` as a spec file, secret-named values masked (a run directory is shared as it
    is): the run's spec, a trial's, a search's best."""
    write_json(path, mask_spec_file({spec_name: spec}))


def run_dir_spec_name(name: str) -> str | None:
    """The spec name in a run directory's name ``{spec_name}_{timestamp}[_{n}]``; None if it is not one."""
    match = RUN_DIR_NAME.fullmatch(name)
    return match["spec"] if match else None


def read_status(layout: RunLayout) -> dict[str, Any] | None:
    """The status file of a run (``{"status": ..., "error": ...}``); None for runs made before it existed or
    an unreadable file."""
    try:
        status = json.loads(layout.status.read_text())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def write_status(layout: RunLayout, status: str, error: str | None = None) -> None:
    """Record the run's state; the fingerprint it started with stays (``set_fingerprint``)."""
    kept = {k: v for k, v in (read_status(layout) or {}).items() if k == FINGERPRINT}
    write_json(layout.status, {"status": status} | ({"error": error} if error else {}) | kept)


def set_fingerprint(layout: RunLayout, fingerprint: str | None) -> None:
    """Record (or, with None, forget) the fingerprint of the spec the run started from
    (``spec.fingerprint``) in its status file: a pipeline reuses a completed run that has its spec's."""
    status = {k: v for k, v in (read_status(layout) or {}).items() if k != FINGERPRINT}
    write_json(layout.status, status | ({FINGERPRINT: fingerprint} if fingerprint else {}))


def announce_run_dir(run_dir: Path) -> None:
    """Tell the launcher of this job (if any) where the run is."""
    path = os.environ.get(RUN_DIR_FILE)
    if path:
        Path(path).write_text(str(run_dir))


@contextmanager
def recorded_status(layout: RunLayout) -> Iterator[None]:
    """Mark the run running, then completed, or failed with the error's first line (secrets masked)."""
    write_status(layout, RUNNING)
    try:
        yield
    except Interrupted as err:
        write_status(layout, INTERRUPTED, str(err))
        raise
    except BaseException as err:
        write_status(layout, FAILED, scrub_text(first_line(err), secret_values()))
        raise
    write_status(layout, COMPLETED)


def is_completed(layout: RunLayout) -> bool:
    """A run that ended well: its status says so, or (a run from before status files) it wrote its results."""
    status = read_status(layout)
    if status is not None:
        return status.get("status") == COMPLETED
    return bool(layout.trials()) or layout.experiment_table.is_file()


def saved_mode(layout: RunLayout) -> str | None:
    """The mode a run was started in (``meta.mode`` of its saved spec)."""
    try:
        spec = json.loads(layout.spec_file.read_text())[layout.spec_name]
        return spec["meta"]["mode"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def newest_run(spec_name: str, root: Path = DATA_ROOT, dev: bool = False) -> Path | None:
    """The newest completed ``{spec_name}_{timestamp}[_{n}]`` run under ``root``: failed, killed and running
    runs never count, dev runs only with ``dev``."""
    runs = []
    for path in root.glob(f"{spec_name}_*"):
        match = RUN_DIR_NAME.fullmatch(path.name)
        layout = RunLayout(path, spec_name)
        if not (match and match["spec"] == spec_name and layout.spec_file.is_file()):
            continue
        if is_completed(layout) and (dev or saved_mode(layout) != "dev"):
            runs.append((match["ts"], int(match["n"] or 0), path))
    return max(runs)[2] if runs else None


def describe_run(layout: RunLayout) -> str:
    """``data/x_ts (train run, 1000 steps)``: what a resolved reference names, for the log."""
    mode = saved_mode(layout) or "unknown mode"
    steps = None
    for trial in layout.trials():
        try:
            steps = int(json.loads(layout.trial_metrics(trial).read_text())["mean"]["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        break
    return f"{layout.run_dir} ({mode} run" + (f", {steps} steps)" if steps is not None else ")")


@dataclass(frozen=True)
class RunReference:
    """A trained model named by a spec key: its run directory, spec name, trial and weights file."""

    run_dir: Path
    spec_name: str
    trial: int
    weights: Path

    @property
    def layout(self) -> RunLayout:
        """Where the files of the weights' run are."""
        return RunLayout(self.run_dir, self.spec_name)

    def spec(self) -> dict:
        """The spec the weights were trained with: the trial's (a search's trials differ from its spec)."""
        return json.loads(self.layout.trial_spec(self.trial).read_text())[self.spec_name]

    @property
    def stem(self) -> str:
        """How the names of the trial's files start (``RunLayout.stem``)."""
        return self.layout.stem(self.trial)


def resolve_reference(reference: str, key: str, root: Path = DATA_ROOT) -> RunReference:
    """``reference`` as a run: ``latest:<spec_name>`` (its newest run under ``root``), a run directory (its
    best trial's session-0 ``best`` weights) or a ``.safetensors`` file of a run. ``key`` names the spec key
    in errors."""
    forms = "a run directory, a .safetensors file of a run, or latest:<spec_name>"
    if reference.startswith((LATEST, LATEST_DEV)):
        dev = reference.startswith(LATEST_DEV)
        spec_name = reference.removeprefix(LATEST_DEV if dev else LATEST)
        run_dir = newest_run(spec_name, root, dev=dev)
        if run_dir is None:
            kind = "completed run" if dev else "completed non-dev run"
            hint = "" if dev else f" (for dev runs too: {LATEST_DEV}{spec_name})"
            raise SpecError(
                f"{key}: no {kind} of {spec_name!r} under {root}/{hint}; train it first, or give {forms}"
            )
        layout = RunLayout(run_dir, spec_name)
        logger.info(f"{key}: {reference} is {describe_run(layout)}")
        return best_weights(layout, key)
    path = Path(reference)
    run_dir = RunLayout.run_dir_of(path)
    spec_name = run_dir_spec_name(run_dir.name)
    if not path.exists() or spec_name is None or not RunLayout(run_dir, spec_name).spec_file.is_file():
        raise SpecError(f"{key}: {reference!r} is not {forms}")
    layout = RunLayout(run_dir, spec_name)
    if path == run_dir:
        return best_weights(layout, key)
    parsed = layout.parse_checkpoint(path.name)
    if parsed is None:
        form = layout.checkpoint("<trial>", "<session>", "<tag>").name
        raise SpecError(f"{key}: {path.name} is not named {form}")
    return RunReference(run_dir, spec_name, parsed[0], path)


def best_weights(layout: RunLayout, key: str) -> RunReference:
    """The ``best`` weights of session 0 of the run's best trial (the first row of a search's table)."""
    trial = 0
    if layout.experiment_table.is_file():
        with layout.experiment_table.open(newline="") as file:
            trial = int(next(csv.DictReader(file))["trial"])
    weights = layout.checkpoint(trial, 0, "best")
    if not weights.is_file():
        raise SpecError(f"{key}: {layout.run_dir} has no {weights.name}; name a weights file instead")
    return RunReference(layout.run_dir, layout.spec_name, trial, weights)


def local_run_references(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, value) of every string in a spec that names a run of this machine's data/:
    ``latest:<spec_name>``, ``latest-dev:<spec_name>`` or a relative path into a run directory, search choices included."""
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
        if node.startswith((LATEST, LATEST_DEV)) or in_run_dir:
            yield key, node
