"""Session, trial and experiment metrics: aggregation across seeds and the graphs of a run (no torch)."""

import numpy as np
import pandas as pd

from hlrp_lab.experiment.results import ENDED, INTERRUPTED
from hlrp_lab.lib.layout import RunLayout
from hlrp_lab.lib.viz import Curve, save_plot, save_scatter


def aggregate_sessions(results: list[dict[str, float]]) -> dict:
    """Mean and (population) std across sessions of every numeric metric, plus the per-session values."""
    frame = pd.DataFrame(results).select_dtypes("number")
    return {
        "mean": frame.mean().to_dict(),
        "std": frame.std(ddof=0).to_dict(),
        "sessions": results,
    }


def metric_curve(history: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray]:
    rows = history[["step", metric]].dropna()
    return rows["step"].to_numpy(), rows[metric].to_numpy()


def save_session_graphs(
    history: pd.DataFrame, metrics: tuple[str, ...], layout: RunLayout, trial: int, session: int
) -> None:
    """One graph per metric of a session (``RunLayout.session_graph``, PNG and HTML)."""
    label = layout.stem(trial, session)
    for metric in metrics:
        if metric not in history:
            continue
        x, y = metric_curve(history, metric)
        path = layout.session_graph(trial, session, metric)
        save_plot([Curve(label, x, y)], path, f"{label}: {metric}", "step", metric)


def trial_curve(histories: list[pd.DataFrame], metric: str, label: str) -> Curve:
    """Mean ± std across sessions at the steps every session logged."""
    per_session = [h.set_index("step")[metric].dropna() for h in histories if metric in h]
    table = pd.concat(per_session, axis=1, join="inner")
    return Curve(
        label, table.index.to_numpy(), table.mean(axis=1).to_numpy(), table.std(axis=1, ddof=0).to_numpy()
    )


def session_histories(layout: RunLayout, trial: int) -> list[pd.DataFrame]:
    """The metrics of each session of a trial, by session."""
    return [pd.read_csv(path) for path in layout.session_metrics_files(trial)]


def save_trial_graphs(layout: RunLayout, trial: int, metrics: tuple[str, ...]) -> None:
    """One graph per metric: the mean over sessions with a ±1 std band (``RunLayout.trial_graph``)."""
    label = layout.stem(trial)
    histories = session_histories(layout, trial)
    for metric in metrics:
        if not any(metric in h for h in histories):
            continue
        curve = trial_curve(histories, metric, label)
        title = f"{label}: {metric} (mean ± std over {len(histories)} sessions)"
        save_plot([curve], layout.trial_graph(trial, metric), title, "step", metric)


def save_experiment_graphs(
    table: pd.DataFrame, params: list[str], metric: str, layout: RunLayout, log_x: set[str]
) -> None:
    """The metric of each scored trial against each searched value, a colour per status
    (``RunLayout.experiment_graph``, PNG and HTML)."""
    spec_name = layout.spec_name
    scored = table.dropna(subset=[metric])
    for param in params:
        rows = scored.dropna(subset=[param])
        if rows.empty:
            continue
        numeric = pd.api.types.is_numeric_dtype(rows[param]) and not pd.api.types.is_bool_dtype(rows[param])
        x = rows[param] if numeric else rows[param].astype(str)
        groups = {
            status: (x[rows["status"] == status], rows.loc[rows["status"] == status, metric])
            for status in (*ENDED, INTERRUPTED)
            if (rows["status"] == status).any()
        }
        title = f"{spec_name}: {metric} vs {param} ({len(rows)} trials)"
        save_scatter(groups, layout.experiment_graph(param), title, param, metric, log_x=param in log_x)
