"""The training loop, checkpoints and control layer on a tiny real LAQ run (in-process)."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from hlrp_lab.experiment.checkpoint import Checkpoints
from hlrp_lab.experiment.control import Trial
from hlrp_lab.experiment.experiment import Experiment
from hlrp_lab.experiment.lab import evaluate_run, run_lab
from hlrp_lab.experiment.optim import build_optimizer, build_scheduler
from hlrp_lab.lib import stop
from hlrp_lab.lib.errors import CheckpointError, Interrupted, NonFiniteLossError
from hlrp_lab.lib.layout import RunLayout
from hlrp_lab.lib.util import make_run_dir
from hlrp_lab.spec.spec_util import Mode

TIMING_KEYS = {"steps_per_s", "train_time"}


def write_spec_file(tmp_path, spec: dict, name: str = "tiny"):
    path = tmp_path / "specs.json"
    path.write_text(json.dumps({name: spec}))
    return path


def trial_metrics(run_dir, name: str = "tiny") -> dict:
    return json.loads((run_dir / "info" / f"{name}_t0_trial_metrics.json").read_text())


def comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


def test_train_writes_run_directory_and_is_deterministic(tmp_path, monkeypatch, tiny_spec):
    monkeypatch.chdir(tmp_path)
    spec_file = write_spec_file(tmp_path, tiny_spec)
    first = run_lab(spec_file, "tiny", Mode("train"), {})
    second = run_lab(spec_file, "tiny", Mode("train"), {})
    assert first != second and first.parent == second.parent == Path("data")
    info = sorted(p.name for p in (first / "info").iterdir())
    assert info == [
        "status.json",
        "tiny_spec.json",
        "tiny_t0_s0_session_metrics.csv",
        "tiny_t0_spec.json",
        "tiny_t0_trial_metrics.json",
    ]
    models = sorted(p.name for p in (first / "model").iterdir())
    assert models == [
        "tiny_t0_s0_best.safetensors",
        "tiny_t0_s0_best_state.pt",
        "tiny_t0_s0_last.safetensors",
        "tiny_t0_s0_last_state.pt",
    ]
    graphs = {p.name for p in (first / "graph").iterdir()}
    assert {"tiny_t0_s0_session_graph_loss.png", "tiny_t0_trial_graph_val_psnr.html"} <= graphs
    assert not any("_picture_" in name for name in graphs)  # train.pictures false (the e2e runs draw them)
    assert (first / "log" / "tiny.log").read_text().count("trial_metrics: ") == 1
    a, b = trial_metrics(first)["mean"], trial_metrics(second)["mean"]
    assert a["step"] == 12 and comparable(a) == comparable(b)
    saved = json.loads((first / "info" / "tiny_spec.json").read_text())["tiny"]
    assert saved["meta"]["run_dir"] == str(first) and saved["meta"]["mode"] == "train"
    assert saved["model"]["quantizer"]["decay"] == 0.99  # defaults are saved


def test_saved_spec_reruns_to_the_same_metrics(tmp_path, monkeypatch, tiny_spec):
    monkeypatch.chdir(tmp_path)
    first = run_lab(write_spec_file(tmp_path, tiny_spec), "tiny", Mode("train"), {})
    rerun = run_lab(first / "info" / "tiny_spec.json", "tiny", Mode("train"), {})
    assert comparable(trial_metrics(first)["mean"]) == comparable(trial_metrics(rerun)["mean"])


def test_non_finite_loss_stops_with_the_step_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, tiny_spec):
    monkeypatch.chdir(tmp_path)
    tiny_spec["optim"].update(lr=1e30, warmup_steps=0)
    tiny_spec["train"].update(eval_frequency=1, log_frequency=1, grad_clip=None, max_step=50)
    with pytest.raises(NonFiniteLossError, match=r"loss is not finite at step (\d+)") as err:
        run_lab(write_spec_file(tmp_path, tiny_spec), "tiny", Mode("train"), {})
    bad_step = int(err.value.args[0].split("at step ")[1].split(";")[0])
    run_dir = max(Path("data").glob("tiny_*"))  # a failed run: latest_run_dir skips it
    state = torch.load(run_dir / "model" / "tiny_t0_s0_last_state.pt", weights_only=True)
    assert 1 <= state["step"] == bad_step - 1


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_eval_mode_scores_the_best_checkpoint(tmp_path, monkeypatch, tiny_spec, precision):
    """Eval mode computes as training's evaluations did: the same numbers, under bf16 autocast too."""
    monkeypatch.chdir(tmp_path)
    tiny_spec["train"].update(precision=precision, pictures=True)
    run_dir = run_lab(write_spec_file(tmp_path, tiny_spec), "tiny", Mode("train"), {})
    best = torch.load(run_dir / "model" / "tiny_t0_s0_best_state.pt", weights_only=True)
    assert evaluate_run(run_dir, "tiny") == run_dir
    evaluated = json.loads((run_dir / "info" / "tiny_t0_eval_metrics.json").read_text())["mean"]
    assert evaluated["step"] == best["step"]
    assert evaluated["val_psnr"] == best["metrics"]["val_psnr"]  # same computation, same number
    layout = RunLayout(run_dir, "tiny")  # and its pictures of the best checkpoint, in the report
    assert json.loads(layout.picture_index(0, 0, "eval").read_text())["step"] == best["step"]
    assert len(layout.pictures(0, 0, "eval")) == 4 and "eval evaluation (step" in layout.report.read_text()


def test_trial_runs_sessions_in_parallel_with_distinct_seeds(tmp_path, tiny_spec):
    tiny_spec["meta"].update(
        max_session=2, spec_name="tiny", run_dir=str(make_run_dir(tmp_path, "tiny", "ts"))
    )
    metrics = Trial(tiny_spec).run()
    sessions = metrics["sessions"]
    assert len(sessions) == 2 and sessions[0]["loss"] != sessions[1]["loss"]
    mean = (sessions[0]["val_psnr"] + sessions[1]["val_psnr"]) / 2
    assert metrics["mean"]["val_psnr"] == pytest.approx(mean)
    assert metrics["std"]["val_psnr"] == pytest.approx(abs(sessions[0]["val_psnr"] - mean))


def test_experiment_runs_trials_into_one_directory(tmp_path, tiny_spec):
    tiny_spec["meta"].update(spec_name="tiny", run_dir=str(make_run_dir(tmp_path, "tiny", "ts")))
    other = json.loads(json.dumps(tiny_spec))
    other["optim"]["lr"] = 3e-3
    table = Experiment(tiny_spec).run([tiny_spec, other])
    run_dir = tmp_path / "tiny_ts"
    assert list(table["trial"]) == [0, 1]
    assert (run_dir / "info" / "tiny_t1_trial_metrics.json").is_file()
    assert (run_dir / "info" / "tiny_experiment.csv").read_text().startswith("trial,")


def test_checkpoint_roundtrip_and_step_mismatch(tmp_path):
    model = torch.nn.Linear(3, 2)
    checkpoints = Checkpoints(tmp_path, "x")
    checkpoints.save("last", model, {"step": 5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_last.safetensors", "x_last_state.pt"]
    fresh = torch.nn.Linear(3, 2)
    assert checkpoints.load("last", fresh)["step"] == 5
    assert torch.equal(fresh.weight, model.weight)
    torch.save({"step": 6}, checkpoints.state_path("last"))
    with pytest.raises(CheckpointError, match="from step 5 but its state from step 6"):
        checkpoints.load("last", fresh)
    with pytest.raises(CheckpointError, match="no best checkpoint"):
        checkpoints.load("best", fresh)


def test_scheduler_warms_up_then_decays_to_min_ratio():
    params = [torch.nn.Parameter(torch.zeros(1))]
    optim = {"name": "AdamW", "lr": 1.0, "weight_decay": 0.0, "warmup_steps": 4, "min_lr_ratio": 0.1}
    optimizer = build_optimizer(params, optim)
    scheduler = build_scheduler(optimizer, optim, max_step=20)
    lrs = []
    for _ in range(20):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    lrs.append(scheduler.get_last_lr()[0])
    assert lrs[0] == pytest.approx(0.2) and lrs[:5] == sorted(lrs[:5]) and lrs[4] == pytest.approx(1.0)
    assert lrs[5:] == sorted(lrs[5:], reverse=True) and lrs[-1] == pytest.approx(0.1)


def test_a_stop_request_writes_last_at_that_step_and_the_run_resumes_from_it(
    tmp_path, monkeypatch, tiny_spec
):
    """SIGUSR1 (Slurm's warning before a time limit): the loop writes `last` at the end of the step, the run
    is marked interrupted and raises Interrupted (exit code 75); train@ continues from that step."""
    monkeypatch.chdir(tmp_path)
    tiny_spec["train"].update(max_step=100_000, eval_frequency=5, log_frequency=5, pictures=True)
    spec_file = write_spec_file(tmp_path, tiny_spec)
    stop.listen(fresh=True)

    def signal_after_first_checkpoint() -> None:
        while not list(Path("data").glob("tiny_*/graph/tiny_t0_s0_picture_last.json")):  # after `last`
            time.sleep(0.01)
        time.sleep(0.5)  # steps on (~100 a second): the request comes between evaluations
        os.kill(os.getpid(), signal.SIGUSR1)

    threading.Thread(target=signal_after_first_checkpoint, daemon=True).start()
    with pytest.raises(Interrupted, match=r"tiny_t0_s0 at step (\d+) of 100000 on SIGUSR1") as err:
        run_lab(spec_file, "tiny", Mode("train"), {})
    step = int(err.value.args[0].split("at step ")[1].split(" ")[0])
    run_dir = max(Path("data").glob("tiny_*"))
    status = json.loads((run_dir / "info" / "status.json").read_text())
    assert status["status"] == "interrupted" and f"train@{run_dir}" in status["error"]
    state = torch.load(run_dir / "model" / "tiny_t0_s0_last_state.pt", weights_only=True)
    assert state["step"] == step > 5  # this step's, not the last evaluation's
    history = pd.read_csv(run_dir / "info" / "tiny_t0_s0_session_metrics.csv")  # the rows so far, and the
    assert 5 <= history["step"].iloc[-1] <= step  # report shows them with the pictures of its evaluations
    report = (run_dir / "report.html").read_text()
    assert "No trial wrote metrics" not in report and "last evaluation (step" in report

    stop.listen(fresh=True)  # a new run listens afresh
    run_lab(spec_file, "tiny", Mode("train", run_dir), {"train.max_step": step + 5})
    assert trial_metrics(run_dir)["mean"]["step"] == step + 5
    assert json.loads((run_dir / "info" / "status.json").read_text())["status"] == "completed"
