"""End to end through the real CLI in subprocesses: the README's dev run, and resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hlrp_lab.lib.layout import RunLayout
from tests.conftest import tiny_spec_dict

ROOT = Path(__file__).parents[1]
TIMING_KEYS = {"steps_per_s", "train_time"}

pytestmark = pytest.mark.slow


def lab_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "hlrp_lab", *args]


def env() -> dict[str, str]:
    return {**os.environ, "TQDM_DISABLE": "1"}


def run_lab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``hlrp-lab ARGS`` in a subprocess, asserting that it succeeded."""
    out = subprocess.run(
        lab_command(*args), cwd=cwd, check=False, capture_output=True, text=True, timeout=600, env=env()
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def only_run_dir(data: Path, name: str) -> Path:
    runs = [p for p in data.iterdir() if p.name.startswith(f"{name}_")]
    assert len(runs) == 1, runs
    return runs[0]


def test_readme_dev_run_beats_the_copy_baseline(tmp_path):
    out = run_lab("run", str(ROOT / "specs" / "laq.json"), "laq_debug", "dev", cwd=tmp_path)
    assert "trial_metrics: " in out.stderr and "run directory: data/laq_debug_" in out.stdout
    run_dir = only_run_dir(tmp_path / "data", "laq_debug")
    for sub in ("info", "graph", "log", "model"):
        assert any((run_dir / sub).iterdir()), sub
    metrics = json.loads((run_dir / "info" / "laq_debug_t0_trial_metrics.json").read_text())["mean"]
    assert metrics["step"] == 300
    assert metrics["val_psnr"] > metrics["copy_psnr"] + 1.0, metrics
    # the latent carries the change
    assert metrics["latent_gain"] > 0.2 and metrics["perplexity"] > 1.5, metrics
    assert (tmp_path / "data" / "cache").is_dir()  # the shards, reused by later runs
    layout = RunLayout(run_dir, "laq_debug")
    for tag in ("last", "best"):  # the pictures of the last and best evaluations, and the report showing them
        names = {
            path.name.removeprefix(layout.picture_prefix(0, 0, tag)) for path in layout.pictures(0, 0, tag)
        }
        assert names == {"reconstruction.png", "atlas.png", "code_examples.png", "code_usage.png"}, tag
    assert json.loads(layout.picture_index(0, 0, "last").read_text())["step"] == 300
    report = layout.report.read_text()  # the best evaluation is the last: its pictures are shown once
    assert f"{metrics['val_psnr']:.4g}" in report
    assert report.count('<img src="data:image/png;base64,') == 4


def resume_spec(tmp_path: Path) -> Path:
    spec = tiny_spec_dict(tmp_path / "cache")
    spec["train"].update(max_step=200, eval_frequency=20, log_frequency=20)
    path = tmp_path / "resume.json"
    path.write_text(json.dumps({"resume": spec}))
    return path


def final_metrics(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "info" / "resume_t0_trial_metrics.json").read_text())["mean"]
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    spec_file = resume_spec(tmp_path)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    run_lab("run", str(spec_file), "resume", "train", cwd=whole)

    proc = subprocess.Popen(
        lab_command("run", str(spec_file), "resume", "train"),
        cwd=killed,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env(),
    )
    deadline = time.monotonic() + 300
    while not list(killed.glob("data/resume_*/model/resume_t0_s0_last_state.pt")):
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before its first checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    run_dir = only_run_dir(killed / "data", "resume")
    assert not (run_dir / "info" / "resume_t0_trial_metrics.json").exists()

    resumed = run_lab("run", str(spec_file), "resume", f"train@{run_dir}", cwd=killed)
    assert "resumed from step" in resumed.stderr
    assert final_metrics(run_dir) == final_metrics(only_run_dir(whole / "data", "resume"))
