"""``report.html``: one self-contained, offline page of a run from its directory's files alone (no torch).

It copes with whatever exists: a run that failed before its first step still gets a page with its status,
its error, the end of its log and the files it left."""

import json
import re
from pathlib import Path

import pandas as pd
from plotly.offline import get_plotlyjs

from hlrp_lab.experiment.report.html import esc, key_values, number, page, size_text, table
from hlrp_lab.experiment.report.provenance import (
    checkpoints,
    manifest_row,
    manifests,
    read_json,
    references,
    spec_root,
)
from hlrp_lab.experiment.report.trials import CURVE, ranked, ranking, search_rows, trial_section, trial_status
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.layout import INFO, RunLayout
from hlrp_lab.lib.runs import COMPLETED, read_status, run_dir_spec_name
from hlrp_lab.lib.util import atomic_write_text
from hlrp_lab.spec.search_space import search_metric
from hlrp_lab.stages import STAGES

LOG_TAIL = 40  # lines of the run's log shown when it did not complete
FILES_LISTED = 500  # files of the run directory listed at most (a search's ray/ holds many)
INLINE_TRIALS = 5  # a search's best trials have their pictures inlined; the others' are linked


def find_spec_name(run_dir: Path) -> str:
    """The spec name of a run directory: from its name, else from the saved spec in ``info/``."""
    name = run_dir_spec_name(run_dir.name)
    if name and RunLayout(run_dir, name).spec_file.is_file():
        return name
    for path in sorted((run_dir / INFO).glob("*.json")):
        saved = read_json(path)
        if isinstance(saved, dict) and len(saved) == 1:
            (candidate,) = saved
            if RunLayout(run_dir, candidate).spec_file == path:
                return candidate
    raise SpecError(f"{run_dir}: not a run directory (no saved spec in info/); pass a run directory of data/")


def saved_spec(layout: RunLayout) -> dict:
    saved = read_json(layout.spec_file)
    spec = saved.get(layout.spec_name) if isinstance(saved, dict) else None
    return spec if isinstance(spec, dict) else {}


def stage_settings(spec: dict) -> tuple[list[str], str | None, str]:
    """(curves to draw, metric, max or min) of the spec's stage; every logged metric for an unknown stage."""
    try:
        config = STAGES.config_class(spec.get("stage"), "stage")
    except SpecError:
        return [], None, "max"
    return list(config.graph_metrics), config.metric, config.metric_mode


def started(ts: object) -> str:
    """``2026_01_31_235959`` as ``2026-01-31 23:59:59``."""
    match = re.fullmatch(r"(\d{4})_(\d{2})_(\d{2})_(\d{2})(\d{2})(\d{2})", str(ts))
    return f"{'-'.join(match.groups()[:3])} {':'.join(match.groups()[3:])}" if match else str(ts or "")


def header(layout: RunLayout, spec: dict, status: dict) -> str:
    meta = spec.get("meta", {})
    state = str(status.get("status", "unknown"))
    pairs = [
        ("stage", esc(spec.get("stage", ""))),
        ("mode", esc(meta.get("mode", ""))),
        ("status", f'<span class="{esc(state)}">{esc(state)}</span>'),
        ("run directory", esc(layout.run_dir)),
        ("started", esc(started(meta.get("experiment_ts")))),
        ("git sha", esc(meta.get("git_sha") or "not recorded")),
    ]
    if status.get("error"):
        pairs.append(("error", f'<span class="failed">{esc(status["error"])}</span>'))
    return f"<h1>{esc(layout.spec_name)}</h1>" + key_values(pairs)


def log_tail(layout: RunLayout) -> str:
    try:
        lines = layout.log_file().read_text(errors="replace").splitlines()[-LOG_TAIL:]
    except OSError:
        return ""
    return f"<h2>End of the log</h2><pre>{esc(chr(10).join(lines))}</pre>"


def provenance(layout: RunLayout, spec: dict) -> str:
    """Data manifest and checksum, the runs the spec refers to, the git commit, the checkpoints."""
    root = spec_root(layout.run_dir, spec)
    parts = ["<h2>Provenance</h2><h3>Data</h3>"]
    found = manifests(spec.get("data") or {}, root)
    if isinstance(found, str):
        parts.append(f"<p class=muted>{esc(found)}</p>")
    else:
        rows = [manifest_row(path) for path in found]
        parts.append(table([esc(k) for k in rows[0]], [[esc(v) for v in row.values()] for row in rows]))
    refs = references(spec, root)
    if refs:
        parts.append("<h3>Runs this one refers to</h3>")
        parts.append(table([esc(k) for k in refs[0]], [[esc(v) for v in row.values()] for row in refs]))
    parts.append(
        f"<h3>Code</h3><p>git commit: {esc(spec.get('meta', {}).get('git_sha') or 'not recorded')}</p>"
    )
    models = checkpoints(layout)
    parts.append("<h3>Checkpoints</h3>")
    if models:
        rows = [[esc(m["name"]), esc(size_text(m["size"])), esc(number(m["step"]))] for m in models]
        parts.append(table(["file", "size", "step"], rows))
    else:
        parts.append("<p class=muted>No checkpoint was written.</p>")
    return "".join(parts)


def files(layout: RunLayout) -> str:
    """Every file of the run directory with its size, in a collapsed list."""
    paths = sorted(p for p in layout.run_dir.rglob("*") if p.is_file() and p != layout.report)
    items = "".join(
        f"<li>{esc(p.relative_to(layout.run_dir).as_posix())} ({esc(size_text(p.stat().st_size))})</li>"
        for p in paths[:FILES_LISTED]
    )
    if len(paths) > FILES_LISTED:
        items += f"<li>and {len(paths) - FILES_LISTED} more</li>"
    return f"<details><summary>Files of the run directory ({len(paths)})</summary><ul>{items}</ul></details>"


def search_table(
    layout: RunLayout, metric: str | None, mode: str, recorded: bool = True
) -> pd.DataFrame | None:
    """A search's table, ranked by ``metric`` and ``mode``; with ``recorded``, by the trials' recorded metric
    and mode (the stage's when none finished)."""
    if not layout.experiment_table.is_file():
        return None
    for trial in layout.trials() if recorded else ():
        recorded = read_json(layout.trial_metrics(trial))
        if isinstance(recorded, dict):
            metric, mode = recorded.get("metric", metric), recorded.get("metric_mode", mode)
            break
    try:
        return ranked(layout.experiment_table, metric or "", mode)
    except (OSError, ValueError):
        return None


def report_html(layout: RunLayout, out_dir: Path) -> str:
    spec, status = saved_spec(layout), read_status(layout) or {}
    graph_metrics, metric, mode = stage_settings(spec)
    body = [header(layout, spec, status)]
    chosen = search_metric(spec)  # the search ranked its trials by it, not by the stage's metric
    rank_metric, rank_mode = chosen or (metric, mode)
    frame = search_table(layout, rank_metric, rank_mode, recorded=chosen is None)
    rows = search_rows(frame)
    if frame is not None:
        body.append(ranking(frame, rank_metric or "metric", rank_mode))
    trials = sorted(set(layout.trials()) | set(layout.trials_with_sessions()) | set(rows))
    if not trials:
        body.append("<p class=muted>No trial wrote metrics.</p>")
    searched = frame is not None and "trial" in frame.columns
    inlined = set(frame["trial"].head(INLINE_TRIALS).astype(int)) if searched else set(trials)
    for trial in trials:
        metrics = graph_metrics or logged_metrics(layout, trial)
        status_line = trial_status(rows.get(trial))
        body.append(trial_section(layout, trial, metrics, out_dir, status_line, trial in inlined))
    if status.get("status") != COMPLETED:
        body.append(log_tail(layout))
    pretty = json.dumps(spec, indent=2)
    body.append(f"<h2>Spec</h2><details><summary>resolved spec</summary><pre>{esc(pretty)}</pre></details>")
    body.append(provenance(layout, spec))
    body.append(f"<h2>Files</h2>{files(layout)}")
    text = "".join(body)
    return page(f"{layout.spec_name} report", text, get_plotlyjs() if CURVE in text else None)


def logged_metrics(layout: RunLayout, trial: int) -> list[str]:
    """Every numeric column but step that a session of ``trial`` logged (for a stage this lab does not know)."""
    columns = []
    for path in layout.session_metrics_files(trial):
        try:
            columns += [c for c in pd.read_csv(path).select_dtypes("number").columns if c != "step"]
        except (OSError, ValueError):
            continue
    return list(dict.fromkeys(columns))


def write_report(run_dir: Path, spec_name: str | None = None, out: Path | None = None) -> Path:
    """Write the run's ``report.html`` (``RunLayout.report``, or ``out``) from its files; return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SpecError(f"{run_dir}: no such run directory; pass a run directory of data/ or latest:<spec>")
    layout = RunLayout(run_dir, spec_name or find_spec_name(run_dir))
    path = Path(out) if out is not None else layout.report
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, report_html(layout, path.parent))
    return path
