"""What of a run directory goes to the Hub: its specs, result tables (Parquet plus CSV) and graphs.

Never logs, Ray's files, optimizer state or anything else; model weights (and a VLA's tokenizer) only when
asked. Secrets are
removed on the way: keys named like a secret are masked in specs, secret values are masked in every text
file, and a binary file that still holds one is left out.
"""

import io
import json
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import pandas as pd
from loguru import logger

from hlrp_lab.lib.layout import RunLayout, spec_and_trial_of
from hlrp_lab.lib.runs import run_dir_spec_name
from hlrp_lab.lib.scrub import holds_secret, mask_spec_file, scrub_text

TEXT_SUFFIXES = {".json", ".csv", ".html"}


@dataclass
class RunBundle:
    """A run's files to upload, by path relative to the run directory, and a summary for the repo's card."""

    files: dict[str, bytes] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


def run_bundle(run_dir: Path, secrets: list[str], models: bool = False) -> RunBundle:
    """The files of ``run_dir`` to upload, with the trial and session tables added as Parquet."""
    bundle = RunBundle()
    patterns = RunLayout.result_globs() + (RunLayout.model_globs() if models else ())
    for path in sorted(p for pattern in patterns for p in run_dir.glob(pattern)):
        bundle.files[path.relative_to(run_dir).as_posix()] = clean_file(path, secrets)
    trials = []
    for path in sorted(run_dir.glob(RunLayout.trial_metrics_glob())):
        table = trial_table(path, run_dir.name)
        trials.append(table)
        stem = path.relative_to(run_dir).with_suffix("").as_posix()
        bundle.files[f"{stem}.parquet"] = to_parquet(table)
        bundle.files[f"{stem}.csv"] = table.to_csv(index=False).encode()
    for name in [n for n in bundle.files if fnmatch(n, RunLayout.session_metrics_glob())]:
        table = pd.read_csv(io.BytesIO(bundle.files[name]))
        bundle.files[name.removesuffix(".csv") + ".parquet"] = to_parquet(table)
    bundle.files = {name: data for name, data in bundle.files.items() if keep_file(name, data, secrets)}
    bundle.summary = run_summary(run_dir, trials)
    return bundle


def clean_file(path: Path, secrets: list[str]) -> bytes:
    """The bytes to upload for ``path``: specs with secret keys masked (never their names or sections, see
    ``mask_spec_file``), text with secret values masked."""
    if path.suffix not in TEXT_SUFFIXES:
        return path.read_bytes()
    text = path.read_text()
    if RunLayout.is_spec_file(path.name):
        text = json.dumps(mask_spec_file(json.loads(text)), indent=2) + "\n"
    return scrub_text(text, secrets).encode()


def keep_file(name: str, data: bytes, secrets: list[str]) -> bool:
    if holds_secret(data, secrets):
        logger.warning(f"not uploading {name}: it holds a secret value")
        return False
    return True


def trial_table(path: Path, run_name: str) -> pd.DataFrame:
    """One row for a trial: run, spec, trial, sessions, the metric that ranks trials and its mode, then each
    metric's mean and ``{metric}_std``."""
    metrics = json.loads(path.read_text())
    spec_name, trial = spec_and_trial_of(path.name)
    row = {
        "run": run_name,
        "spec_name": spec_name,
        "trial": trial,
        "sessions": len(metrics["sessions"]),
        "metric": metrics.get("metric"),
        "metric_mode": metrics.get("metric_mode"),
        **metrics["mean"],
        **{f"{key}_std": value for key, value in metrics["std"].items()},
    }
    return pd.DataFrame([row])


def to_parquet(table: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    return buffer.getvalue()


def run_summary(run_dir: Path, trials: list[pd.DataFrame]) -> dict:
    """Spec, stage, mode, start time, trials and the best trial's metric: the run's line on the repo's card."""
    spec_name = run_dir_spec_name(run_dir.name) or ""
    spec_file = RunLayout(run_dir, spec_name).spec_file
    spec = json.loads(spec_file.read_text()).get(spec_name, {}) if spec_file.is_file() else {}
    meta = spec.get("meta", {})
    summary = {
        "spec_name": meta.get("spec_name", spec_name),
        "stage": spec.get("stage"),
        "mode": meta.get("mode"),
        "started": meta.get("experiment_ts"),
        "trials": len(trials),
    }
    return {**summary, **best_trial(trials)}


def best_trial(trials: list[pd.DataFrame]) -> dict:
    """The ranking metric's mean ± std in the trial with the best mean; empty if unknown."""
    if not trials:
        return {}
    table = pd.concat(trials, ignore_index=True)
    metric, mode = table["metric"][0], table["metric_mode"][0]
    if not isinstance(metric, str) or metric not in table or table[metric].isna().all():
        return {}
    best = table.loc[table[metric].idxmax() if mode == "max" else table[metric].idxmin()]
    std = best.get(f"{metric}_std")
    return {"metric": metric, "mean": float(best[metric]), "std": None if pd.isna(std) else float(std)}
