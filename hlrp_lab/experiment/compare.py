"""Runs side by side, for ``hlrp-lab plot`` and ``plot-list``: find runs under data/, load the session
histories of the trial to plot, build mean ± std curves (no torch)."""

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from hlrp_lab.experiment.analysis import session_histories, trial_curve
from hlrp_lab.lib.errors import RunError, SpecError
from hlrp_lab.lib.layout import RunLayout
from hlrp_lab.lib.runs import DATA_ROOT, FAILED, is_completed, newest_run, read_status, run_dir_spec_name
from hlrp_lab.lib.viz import Curve, save_plot


@dataclass(frozen=True)
class Run:
    """A run directory ``{spec_name}_{timestamp}[_N]`` holding its saved spec (``RunLayout.spec_file``)."""

    path: Path
    spec_name: str

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.path, self.spec_name)

    def spec(self) -> dict:
        return json.loads(self.layout.spec_file.read_text())[self.spec_name]


@dataclass(frozen=True)
class Sessions:
    """The session histories of the trial of a run that gets plotted."""

    run: Run
    trial: int
    histories: list[pd.DataFrame]

    def metrics(self) -> list[str]:
        """Every column but step that holds a value in some session, in the order the CSVs have them."""
        columns = (c for h in self.histories for c in h.columns if c != "step" and h[c].notna().any())
        return list(dict.fromkeys(columns))

    def stage_metric(self) -> str | None:
        """The metric the stage ranks trials by (e.g. val_psnr), as the trial recorded it."""
        path = self.run.layout.trial_metrics(self.trial)
        return json.loads(path.read_text()).get("metric") if path.is_file() else None


def as_run(path: Path) -> Run | None:
    """``path`` as a run, or None if it is not a run directory."""
    spec_name = run_dir_spec_name(path.name)
    if spec_name is not None and RunLayout(path, spec_name).spec_file.is_file():
        return Run(path, spec_name)
    return None


def find_runs(root: Path = DATA_ROOT) -> list[Run]:
    """Every run directory directly under ``root``, by name."""
    paths = sorted(root.iterdir()) if root.is_dir() else []
    return [run for path in paths if path.is_dir() and (run := as_run(path))]


def resolve_run(name: str, root: Path = DATA_ROOT) -> Run:
    """A run directory given as a path or as a name under ``root``; a spec name gives its newest run."""
    for path in (Path(name), root / name):
        if path.is_dir():
            if run := as_run(path):
                return run
            raise SpecError(f"-f {name}: {path} is not a run directory ({{spec}}_{{timestamp}}/info/...)")
    newest = newest_run(name, root)
    if newest is None:
        raise SpecError(
            f"-f {name}: no run directory or spec of that name under {root}/; see hlrp-lab plot-list"
        )
    return Run(newest, name)


def ranked_trials(run: Run) -> list[int]:
    """Trials with session metrics: in the order of the experiment table (best first) when the run has one,
    else by number. Trials stopped early by ASHA have no session metrics."""
    found = set(run.layout.trials_with_sessions())
    table = run.layout.experiment_table
    order = pd.read_csv(table)["trial"].tolist() if table.is_file() else sorted(found)
    return [trial for trial in order if trial in found]


def load_sessions(run: Run) -> Sessions | None:
    """The sessions of the run's first ranked trial; None if no trial has session metrics."""
    trials = ranked_trials(run)
    if not trials:
        return None
    return Sessions(run, trials[0], session_histories(run.layout, trials[0]))


def failure(run: Run) -> str | None:
    """The one-line error of a run whose status file says it failed; None otherwise."""
    status = read_status(run.layout) or {}
    if status.get("status") != FAILED:
        return None
    return " ".join(str(status.get("error") or "no error recorded").split())


def plotted_sessions(run: Run) -> Sessions:
    """``load_sessions``, failing when there is nothing to plot."""
    if sessions := load_sessions(run):
        return sessions
    error = failure(run)
    wanted = run.layout.session_metrics("*", "*").relative_to(run.path).as_posix()
    raise RunError(
        f"{run.path}: no session metrics to plot ({wanted}); "
        + (f"the run failed: {error}" if error else "the run failed or was stopped before it logged a row")
    )


def run_curve(sessions: Sessions, metric: str, label: str) -> Curve:
    """Mean over the sessions, with a ±1 std band when there are two or more."""
    if metric not in sessions.metrics():
        raise SpecError(
            f"-m {metric}: {sessions.run.path.name} (trial {sessions.trial}) has no {metric!r}; "
            f"it has: {', '.join(sessions.metrics())}"
        )
    curve = trial_curve(sessions.histories, metric, label)
    return curve if len(sessions.histories) > 1 else replace(curve, std=None)


def default_legends(runs: list[Run]) -> list[str]:
    """Spec names; the run directory names when two runs share a spec."""
    names = [run.spec_name for run in runs]
    return names if len(set(names)) == len(names) else [run.path.name for run in runs]


def file_stem(text: str) -> str:
    """``text`` as a file name: lowercase letters, digits and underscores."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:120] or "plot"


def plot_runs(
    names: list[str], metric: str | None, legends: list[str] | None, title: str | None, out_dir: Path
) -> tuple[list[Sessions], list[Path]]:
    """One graph of ``metric`` against step for the runs ``names``; ``metric`` defaults to the stage's
    metric recorded by the first run (else loss). Returns what was plotted and the PNG and HTML paths."""
    if not names:
        raise SpecError("-f/--runs: no runs given")
    runs = [resolve_run(name) for name in names]
    if legends is not None and len(legends) != len(runs):
        raise SpecError(f"-l/--legends: {len(legends)} legends for {len(runs)} runs; give one per run")
    all_sessions = [plotted_sessions(run) for run in runs]
    metric = metric or all_sessions[0].stage_metric() or "loss"
    labels = legends or default_legends(runs)
    curves = [run_curve(s, metric, label) for s, label in zip(all_sessions, labels, strict=True)]
    stem = file_stem(title or f"{metric}_{'_vs_'.join(run.spec_name for run in runs)}")
    banded = any(curve.std is not None for curve in curves)
    title = title or f"{metric} vs step" + (" (mean ± 1 std over sessions)" if banded else "")
    return all_sessions, save_plot(curves, out_dir / stem, title, "step", metric)


LIST_HEADER = ("run", "stage", "mode", "plottable", "trial", "sessions", "metrics")


def list_row(run: Run) -> tuple[str, ...]:
    """``plot-list``'s row of a run: what ``plot`` would draw from it."""
    spec = run.spec()
    head = (run.path.name, str(spec.get("stage")), str(spec["meta"].get("mode")))
    sessions, error = load_sessions(run), failure(run)
    if sessions is None:
        return (*head, "no", "-", "0", no_metrics(run, error))
    metrics = ", ".join(sessions.metrics()) + (f" (the run failed: {error})" if error else "")
    return (*head, "yes", f"t{sessions.trial}", str(len(sessions.histories)), metrics)


def no_metrics(run: Run, error: str | None) -> str:
    """Why a run has no session metrics, from what its directory holds: failed (with its error), completed
    without any (its status, or its results for a run from before status files), else killed or running."""
    if error is not None:
        return f"failed: {error}"
    if is_completed(run.layout):
        return "(no session metrics)"
    return "no metrics (killed or still running?)"
