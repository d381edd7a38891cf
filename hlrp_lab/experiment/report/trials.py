"""The report's trial sections: metrics (mean ± std), curves (plotly, a line per session), the pictures of the
last and best evaluations, rollout videos, profile tables; and a search's ranking of its trials (no torch)."""

import json
import os
import re
from pathlib import Path

import pandas as pd

from hlrp_lab.experiment.analysis import metric_curve
from hlrp_lab.experiment.report.html import data_uri, esc, key_values, number, table
from hlrp_lab.experiment.report.provenance import read_json
from hlrp_lab.lib.layout import RunLayout
from hlrp_lab.lib.viz import Curve, plotly_figure

INLINE_VIDEO_BYTES = 8 << 20  # videos of a run up to this size in all are inlined; larger ones are linked
TAGS = ("last", "best", "eval")  # eval: `eval` mode's pictures of the best checkpoint
CURVE = '<div class="curve">'  # around each figure: the page carries plotly's bundle when it has one


def histories(layout: RunLayout, trial: int, sessions: list[int]) -> dict[int, pd.DataFrame]:
    """The metrics table of each of ``sessions`` that wrote a readable one, by session."""
    found = {}
    for session in sessions:
        try:
            found[session] = pd.read_csv(layout.session_metrics(trial, session))
        except (OSError, ValueError):
            continue
    return found


def sessions_of(layout: RunLayout, trial: int) -> list[int]:
    """Sessions of ``trial`` that left metrics, checkpoints or pictures."""
    pattern = re.compile(rf"{re.escape(layout.stem(trial))}_s(\d+)_")
    names = [p.name for folder in (layout.info, layout.model, layout.graph) for p in folder.glob("*")]
    return sorted({int(m[1]) for name in names if (m := pattern.match(name))})


def metrics_table(metrics: dict, key: str | None) -> str:
    """Each metric of a trial (or eval) metrics file: mean ± std over its sessions, or the value of its one
    session; the stage's metric in bold."""
    mean, std = metrics.get("mean") or {}, metrics.get("std") or {}
    names, count = list(mean), len(metrics.get("sessions") or [])
    if count > 1:
        rows = [(esc(name), esc(f"{number(mean[name])} ± {number(std.get(name))}")) for name in names]
        header = ("metric", f"mean ± std over {count} sessions")
    else:
        rows = [(esc(name), esc(number(mean[name]))) for name in names]
        header = ("metric", "value (1 session)")
    return table(header, rows, [names.index(key)] if key in names else [])


def curves(found: dict[int, pd.DataFrame], metrics: list[str], trial: int) -> list[str]:
    """One interactive figure per metric that some session logged: a line per session."""
    figures = []
    for metric in metrics:
        lines = [
            Curve(f"session {s}", *metric_curve(h, metric))
            for s, h in found.items()
            if metric in h.columns and h[metric].notna().any()
        ]
        if not lines:
            continue
        figure = plotly_figure(lines, metric, "step", metric)
        figure.update_layout(height=340, margin={"l": 50, "r": 20, "t": 40, "b": 40})
        div_id = f"curve-{trial}-{re.sub(r'[^A-Za-z0-9_-]', '_', metric)}"
        html = figure.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, default_height=340)
        figures.append(f"{CURVE}{html}</div>")
    return figures


def picture_step(layout: RunLayout, trial: int, session: int, tag: str) -> int | None:
    """The step of a session's ``tag`` pictures, from their index."""
    index = read_json(layout.picture_index(trial, session, tag))
    step = index.get("step") if isinstance(index, dict) else None
    return step if isinstance(step, int) else None


def pictures(layout: RunLayout, trial: int, session: int, inline: bool, out_dir: Path) -> str:
    """The session's pictures at its last and best evaluations (and of ``eval`` mode), with the step of each
    (best once when it is the last); inlined, or linked relative to the report's folder."""
    parts = []
    steps = {tag: picture_step(layout, trial, session, tag) for tag in TAGS}
    drawn = {tag: layout.pictures(trial, session, tag) for tag in TAGS}
    for tag in TAGS:
        paths = drawn[tag]
        at = f" (step {steps[tag]})" if steps[tag] is not None else ""
        if (
            tag == "best"
            and paths
            and drawn["last"]
            and steps["best"] is not None
            and steps["best"] == steps["last"]
        ):
            parts.append(f"<h4>best evaluation{at}</h4><p>The last evaluation was the best.</p>")
            continue
        prefix = layout.picture_prefix(trial, session, tag)
        figures = "".join(
            f'<figure><img src="{picture_source(path, inline, out_dir)}" alt="{esc(path.name)}">'
            f"<figcaption>{esc(path.stem.removeprefix(prefix))}</figcaption></figure>"
            for path in paths
        )
        if figures:
            parts.append(f"<h4>{tag} evaluation{at}</h4><div class=figures>{figures}</div>")
    return "".join(parts)


def picture_source(path: Path, inline: bool, out_dir: Path) -> str:
    """A PNG as a data URI, or as a link relative to the report's folder."""
    if inline:
        return data_uri("image/png", path.read_bytes())
    return esc(Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix())


def videos(layout: RunLayout, trial: int, session: int, inline: bool, out_dir: Path) -> str:
    """The session's rollout videos: inlined, or linked relative to the report's folder."""
    prefix = layout.video_prefix(trial, session)
    items = []
    for path in sorted(prefix.parent.glob(f"{prefix.name}_*.mp4")):
        if inline:
            source = data_uri("video/mp4", path.read_bytes())
        else:
            source = esc(Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix())
        link = "" if inline else f' <a href="{source}">{esc(path.name)}</a>'
        items.append(
            f'<figure><video controls preload="metadata" width="320" src="{source}"></video>'
            f"<figcaption>{esc(path.stem.removeprefix(prefix.name + '_'))}{link}</figcaption></figure>"
        )
    return f"<div class=figures>{''.join(items)}</div>" if items else ""


def videos_inline(layout: RunLayout) -> bool:
    """Whether the run's rollout videos are small enough in all to be inlined."""
    return sum(p.stat().st_size for p in layout.graph.glob("*.mp4")) <= INLINE_VIDEO_BYTES


def profile_table(path: Path) -> str:
    """A session's ``--profile`` table as HTML."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError):
        return f"<p class=muted>{esc(path.name)} is not readable</p>"
    rows = [[esc(number(value)) for value in row] for row in frame.itertuples(index=False)]
    return table([esc(c) for c in frame.columns], rows)


def trial_section(
    layout: RunLayout,
    trial: int,
    graph_metrics: list[str],
    out_dir: Path,
    status: str,
    inline_pictures: bool = True,
) -> str:
    """Everything of one trial, under the anchor ``#trial-{trial}``: its metrics beside its curves, then each
    session's pictures (inlined, or linked when not ``inline_pictures``), videos and profile."""
    metrics = read_json(layout.trial_metrics(trial))
    key = metrics.get("metric") if isinstance(metrics, dict) else None
    if isinstance(metrics, dict):
        tables = f"<h3>Trial metrics</h3>{metrics_table(metrics, key)}"
    else:
        tables = "<p class=muted>No trial metrics: the trial did not finish.</p>"
    evaluated = read_json(layout.eval_metrics(trial))
    if isinstance(evaluated, dict):
        tables += f"<h3>Evaluation of the best checkpoints</h3>{metrics_table(evaluated, key)}"
    sessions = sessions_of(layout, trial)
    found = histories(layout, trial, sessions)
    logged = [c for h in found.values() for c in h.columns if c != "step"]
    figures = "".join(curves(found, [m for m in graph_metrics if m in logged], trial))
    parts = [f'<section id="trial-{trial}"><h2>Trial {trial}</h2>{status}']
    parts.append(f"<div class=overview><div>{tables}</div><div class=curves>{figures}</div></div>")
    inline = videos_inline(layout)
    for session in sessions:
        media = pictures(layout, trial, session, inline_pictures, out_dir)
        media += videos(layout, trial, session, inline, out_dir)
        profile = layout.profile_table(trial, session)
        if profile.is_file():
            media += f"<h4>Profile</h4>{profile_table(profile)}"
        if media:
            parts.append(f"<h3>Session {session}</h3>{media}")
    return "".join(parts) + "</section>"


def ranked(table_path: Path, metric: str, mode: str) -> pd.DataFrame:
    """A search's table, best trial first by ``metric`` (``mode`` max or min), unscored trials last."""
    frame = pd.read_csv(table_path)
    if metric not in frame.columns:
        return frame
    return frame.sort_values(
        [metric, "trial"], ascending=[mode == "min", True], na_position="last", ignore_index=True
    )


def ranking(frame: pd.DataFrame, metric: str, mode: str) -> str:
    """The ranked table; each trial links to its section."""
    columns = [c for c in frame.columns if c != "trial"]
    rows = [
        [
            str(rank),
            f'<a href="#trial-{int(row["trial"])}">trial {int(row["trial"])}</a>',
            *(esc(number(cell)) if not pd.isna(cell) else "" for cell in (row[c] for c in columns)),
        ]
        for rank, (_, row) in enumerate(frame.iterrows(), 1)
    ]
    header = ["rank", "trial", *(esc(c) for c in columns)]
    return f"<h2>Trials ranked by {esc(metric)} ({esc(mode)})</h2>" + table(header, rows)


def trial_status(row: dict | None) -> str:
    """A search trial's status and error, from its row in the table."""
    if not row:
        return ""
    pairs = [("status", esc(row.get("status", "")))]
    if isinstance(row.get("error"), str):
        pairs.append(("error", f'<span class="failed">{esc(row["error"])}</span>'))
    return key_values(pairs)


def search_rows(frame: pd.DataFrame | None) -> dict[int, dict]:
    """A search table's rows by trial."""
    if frame is None or "trial" not in frame.columns:
        return {}
    return {int(row["trial"]): json.loads(row.to_json()) for _, row in frame.iterrows()}
