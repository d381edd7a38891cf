"""The study report a pipeline ends with (``hlrp-lab pipeline``): one table of every step's metrics as mean ±
std over seeds, with fixed reference rows (anchors), and a bar chart per metric; as an offline HTML page and
as a Markdown table to paste into a document (no torch)."""

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go
from loguru import logger
from plotly.offline import get_plotlyjs

from hlrp_lab.experiment.report.html import esc, key_values, number, page, table
from hlrp_lab.experiment.report.provenance import read_json
from hlrp_lab.experiment.report.trials import CURVE
from hlrp_lab.lib.layout import RunLayout
from hlrp_lab.lib.util import atomic_write_text
from hlrp_lab.lib.viz import css_color

STUDY_HTML, STUDY_MD = "study.html", "study.md"
REUSED, NEW = "reused", "new"  # how a step came by its run
COLUMNS = ("step", "spec", "mode", "run", "used", "seeds")
MISSING = "–"
ANCHOR = "reference"  # the `used` cell of an anchor row
NOTE = (
    "Mean ± std over seeds (sessions) of each step's trial metrics; an eval step's are the evaluation of its "
    "run's best checkpoints. Reference rows are fixed values from the pipeline spec, not runs."
)


@dataclass(frozen=True)
class StepRun:
    """A pipeline step and the run it used: ``reused`` (a completed run of the same spec) or ``new`` (trained,
    or evaluated, now). An ``eval`` step's run is the run it evaluated."""

    step: str
    spec_name: str
    mode: str
    run_dir: Path
    used: str

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_dir, self.spec_name)

    def metrics(self) -> dict | None:
        """The ``{"mean", "std", "sessions"}`` this step stands for: the trial metrics of the run's (best) trial,
        or an eval step's eval metrics of it; None when there are none."""
        layout, trial = self.layout, study_trial(self.layout)
        found = read_json(layout.eval_metrics(trial) if self.mode == "eval" else layout.trial_metrics(trial))
        return found if isinstance(found, dict) and isinstance(found.get("mean"), dict) else None

    def stage_metric(self) -> str | None:
        """The metric the run's stage ranks by, as its trial recorded it."""
        found = read_json(self.layout.trial_metrics(study_trial(self.layout)))
        return found.get("metric") if isinstance(found, dict) else None


def study_trial(layout: RunLayout) -> int:
    """The trial a run stands for: a search's best (the first row of its table), else trial 0."""
    try:
        with layout.experiment_table.open(newline="") as file:
            return int(next(csv.DictReader(file))["trial"])
    except (OSError, StopIteration, KeyError, ValueError):
        return 0


@dataclass(frozen=True)
class Cell:
    """A metric of a row: its mean, std and number of sessions (1: no std shown)."""

    mean: float
    std: float
    sessions: int

    def text(self) -> str:
        return number(self.mean) if self.sessions < 2 else f"{number(self.mean)} ± {number(self.std)}"


def cells(step: StepRun, metrics: list[str]) -> dict[str, Cell]:
    """The step's value of each of ``metrics`` that its metrics file holds."""
    found = step.metrics()
    if found is None:
        return {}
    mean, std, sessions = found["mean"], found.get("std") or {}, len(found.get("sessions") or []) or 1
    return {
        m: Cell(mean[m], std.get(m, 0.0), sessions) for m in metrics if isinstance(mean.get(m), int | float)
    }


def seeds(step: StepRun) -> str:
    found = step.metrics()
    return str(len(found.get("sessions") or [])) if found else MISSING


def study_metrics(steps: list[StepRun], metrics: list[str]) -> list[str]:
    """``metrics``, or (none given) each step's stage metric; a metric no step has is named in a warning."""
    chosen = metrics or list(dict.fromkeys(m for step in steps if (m := step.stage_metric())))
    for metric in chosen:
        if not any(metric in cells(step, [metric]) for step in steps):
            logger.warning(
                f"report.metrics: no step has {metric!r}; check its spelling against the runs' metrics"
            )
    return chosen


def step_row(step: StepRun, metrics: list[str]) -> list[str]:
    """A step's cells as text: what ran, then each metric (mean ± std)."""
    values = cells(step, metrics)
    head = [step.step, step.spec_name, step.mode, step.run_dir.name, step.used, seeds(step)]
    return head + [values[m].text() if m in values else MISSING for m in metrics]


def anchor_row(label: str, values: dict[str, float], metrics: list[str]) -> list[str]:
    """A reference row's cells as text: its label, then its value of each metric it has."""
    return [label, "", "", "", ANCHOR, ""] + [number(values[m]) if m in values else MISSING for m in metrics]


def markdown_cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def markdown_table(steps: list[StepRun], metrics: list[str], anchors: dict[str, dict[str, float]]) -> str:
    """The study as a Markdown table: a row per step, then a row per anchor."""
    rows = [step_row(step, metrics) for step in steps]
    rows += [anchor_row(label, values, metrics) for label, values in anchors.items()]
    lines = ["| " + " | ".join([*COLUMNS, *metrics]) + " |", "|" + " --- |" * (len(COLUMNS) + len(metrics))]
    lines += ["| " + " | ".join(markdown_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def html_table(
    steps: list[StepRun], metrics: list[str], anchors: dict[str, dict[str, float]], out_dir: Path
) -> str:
    """The study table; each run links to its report."""
    rows = []
    for step in steps:
        cells_html = [esc(cell) for cell in step_row(step, metrics)]
        report = Path(os.path.relpath(step.layout.report.resolve(), out_dir.resolve())).as_posix()
        cells_html[3] = f'<a href="{esc(report)}">{cells_html[3]}</a>'
        rows.append(cells_html)
    rows += [[esc(cell) for cell in anchor_row(label, v, metrics)] for label, v in anchors.items()]
    return table([esc(c) for c in (*COLUMNS, *metrics)], rows)


def bar_chart(steps: list[StepRun], metric: str, anchors: dict[str, dict[str, float]]) -> str | None:
    """One metric across the steps that have it (mean, ± std error bars) and the anchors (grey); None when no
    step has it."""
    values = [(step.step, cell) for step in steps if (cell := cells(step, [metric]).get(metric))]
    if not values:
        return None
    figure = go.Figure()
    figure.add_trace(
        go.Bar(
            x=[name for name, _ in values],
            y=[cell.mean for _, cell in values],
            error_y={"type": "data", "array": [cell.std for _, cell in values], "visible": True},
            marker_color=css_color(0),
            name="steps (mean ± std over seeds)",
        )
    )
    anchored = [(label, v[metric]) for label, v in anchors.items() if metric in v]
    if anchored:
        figure.add_trace(
            go.Bar(x=[a for a, _ in anchored], y=[v for _, v in anchored], marker_color="#999", name=ANCHOR)
        )
    figure.update_layout(
        title=f"{metric} (mean ± std over seeds)",
        yaxis_title=metric,
        template="plotly_white",
        height=360,
        margin={"l": 50, "r": 20, "t": 50, "b": 60},
    )
    div_id = f"study-{re.sub(r'[^A-Za-z0-9_-]', '_', metric)}"
    html = figure.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, default_height=360)
    return f"{CURVE}{html}</div>"


def study_html(
    name: str,
    header: dict[str, str],
    steps: list[StepRun],
    metrics: list[str],
    anchors: dict[str, dict[str, float]],
    out_dir: Path,
) -> str:
    """The whole page: what ran, the table, a chart per metric; plotly inlined once when there is a chart."""
    charts = [chart for metric in metrics if (chart := bar_chart(steps, metric, anchors))]
    body = [
        f"<h1>{esc(name)}: study</h1>",
        key_values((key, esc(value)) for key, value in header.items()),
        "<h2>Results</h2>",
        html_table(steps, metrics, anchors, out_dir),
        f"<p class=muted>{esc(NOTE)}</p>",
    ]
    if charts:
        body.append(f"<h2>Plots</h2><div class=curves>{''.join(charts)}</div>")
    return page(f"{name} study", "".join(body), get_plotlyjs() if charts else None)


def write_study(
    out_dir: Path,
    name: str,
    header: dict[str, str],
    steps: list[StepRun],
    metrics: list[str],
    anchors: dict[str, dict[str, float]],
) -> tuple[Path, Path]:
    """Write ``study.html`` and ``study.md`` into ``out_dir``; return their paths."""
    chosen = study_metrics(steps, metrics)
    html, markdown = out_dir / STUDY_HTML, out_dir / STUDY_MD
    atomic_write_text(html, study_html(name, header, steps, chosen, anchors, out_dir))
    atomic_write_text(markdown, markdown_table(steps, chosen, anchors))
    return html, markdown
