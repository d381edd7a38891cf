"""Session, trial and experiment metrics: aggregation across seeds and the graphs in graph/ (no torch)."""

from pathlib import Path

import numpy as np
import pandas as pd

from hlrp_lab.experiment.results import ENDED, INTERRUPTED
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
    history: pd.DataFrame, metrics: tuple[str, ...], graph_dir: Path, prefix: str
) -> None:
    """One graph per metric of a session: ``graph/{prefix}_session_graph_{metric}.{png,html}``."""
    for metric in metrics:
        if metric not in history:
            continue
        x, y = metric_curve(history, metric)
        stem = graph_dir / f"{prefix}_session_graph_{metric}"
        save_plot([Curve(prefix, x, y)], stem, f"{prefix}: {metric}", "step", metric)


def trial_curve(histories: list[pd.DataFrame], metric: str, label: str) -> Curve:
    """Mean ± std across sessions at the steps every session logged."""
    per_session = [h.set_index("step")[metric].dropna() for h in histories if metric in h]
    table = pd.concat(per_session, axis=1, join="inner")
    return Curve(
        label, table.index.to_numpy(), table.mean(axis=1).to_numpy(), table.std(axis=1, ddof=0).to_numpy()
    )


def session_histories(info_dir: Path, trial_prefix: str) -> list[pd.DataFrame]:
    return [pd.read_csv(path) for path in sorted(info_dir.glob(f"{trial_prefix}_s*_session_metrics.csv"))]


def save_trial_graphs(run_dir: Path, trial_prefix: str, metrics: tuple[str, ...]) -> None:
    """One graph per metric: the mean over sessions with a ±1 std band."""
    histories = session_histories(run_dir / "info", trial_prefix)
    for metric in metrics:
        if not any(metric in h for h in histories):
            continue
        curve = trial_curve(histories, metric, trial_prefix)
        title = f"{trial_prefix}: {metric} (mean ± std over {len(histories)} sessions)"
        save_plot([curve], run_dir / "graph" / f"{trial_prefix}_trial_graph_{metric}", title, "step", metric)


def save_experiment_graphs(
    table: pd.DataFrame, params: list[str], metric: str, graph_dir: Path, spec_name: str, log_x: set[str]
) -> None:
    """The metric of each scored trial against each searched value, a colour per status:
    ``graph/{spec_name}_experiment_graph_{param}.{png,html}`` (dots in the param become underscores)."""
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
        stem = graph_dir / f"{spec_name}_experiment_graph_{param.replace('.', '_')}"
        title = f"{spec_name}: {metric} vs {param} ({len(rows)} trials)"
        save_scatter(groups, stem, title, param, metric, log_x=param in log_x)
