"""An experiment's results: one row per trial, sorted by the stage's metric; pruning of model files."""

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from hlrp_lab.lib.layout import file_stem
from hlrp_lab.lib.util import atomic_write

# How a trial ended, as its row in the experiment table says
COMPLETED, STOPPED_EARLY, INTERRUPTED, FAILED = "completed", "stopped early", "interrupted", "failed"
ENDED = (COMPLETED, STOPPED_EARLY)  # ran as the search meant: to the end, or until ASHA stopped it


@dataclass
class TrialRecord:
    """How one trial ended (completed, stopped early, failed, interrupted): the ``metrics`` it last reported,
    its spec and the sampled ``values`` it took, by spec path."""

    trial: int
    status: str
    metrics: dict[str, float]
    spec: dict
    values: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def cell(value: Any) -> Any:
    """A table cell: lists and objects (a sampled component block, channel list) as JSON text."""
    return json.dumps(value) if isinstance(value, list | dict) else value


def experiment_table(
    records: list[TrialRecord], metric: str, mode: str, params: list[str], metrics: Iterable[str]
) -> pd.DataFrame:
    """trial, status, the metric, steps reached, each searched value (empty where the sampled component
    lacks the key), the other metrics and the error; best first, failed trials last."""
    others = [m for m in metrics if m != metric]
    rows = [
        {
            "trial": record.trial,
            "status": record.status,
            metric: record.metrics.get(metric),
            "step": record.metrics.get("step"),
            **{param: cell(record.values[param]) for param in params if param in record.values},
            **{name: record.metrics.get(name) for name in others},
            "error": record.error,
        }
        for record in records
    ]
    table = pd.DataFrame(rows, columns=["trial", "status", metric, "step", *params, *others, "error"])
    table = table.astype({metric: float, "step": float, **dict.fromkeys(others, float)})
    return table.sort_values(
        [metric, "trial"], ascending=[mode == "min", True], na_position="last", ignore_index=True
    )


def save_table(table: pd.DataFrame, stem: Path) -> None:
    """``stem.csv`` and ``stem.parquet``, each written atomically (a failed write keeps the previous file)."""
    atomic_write(stem.with_name(f"{stem.name}.csv"), lambda f: table.to_csv(f, index=False))
    atomic_write(stem.with_name(f"{stem.name}.parquet"), lambda f: table.to_parquet(f, index=False))


def keep_models(model_dir: Path, spec_name: str, ranked: list[int], trials: Iterable[int], keep: int) -> None:
    """Delete the model files of every trial but the first ``keep`` of ``ranked`` (-1 keeps all): those in
    ``model_dir`` (``RunLayout.model``) whose names start with the trial's stem."""
    if keep < 0:
        return
    kept = set(ranked[:keep])
    for trial in trials:
        if trial not in kept:
            for path in model_dir.glob(f"{file_stem(spec_name, trial)}_*"):
                if path.is_dir():  # a VLA trial's tokenizer
                    shutil.rmtree(path)
                else:
                    path.unlink()
