"""StepProfile (``--profile``): a real torch.profiler over a tiny model loop driven step by step, the table,
the data-stall verdict, and the CLI end to end."""

import contextlib
import csv
import json
import time
from pathlib import Path

import pytest
import torch

from hlrp_lab.experiment.profile import StepProfile
from tests.test_e2e import only_run_dir, run_lab

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).parents[2]


def open_profile(tmp_path: Path, enabled: bool = True) -> StepProfile:
    folder, table = tmp_path / "profile" / "run_t0_s0", tmp_path / "profile" / "run_t0_s0_profile.csv"
    return StepProfile(enabled, folder, table, torch.device("cpu"), "run_t0_s0")


def train(profile: StepProfile, steps: int, data_s: float = 0.0, eval_every: int = 0, grad_accum: int = 2):
    """A tiny model's loop as the lab's Loop times it: ``grad_accum`` micro-batches of data then compute, the
    optimizer, the step done, and an evaluation every ``eval_every`` steps."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(1, steps + 1):
        for _ in range(grad_accum):
            with profile.phase("data"):
                time.sleep(data_s)  # a loader that keeps the model waiting
                batch = torch.randn(8, 16)
            with profile.phase("compute"):
                (model(batch).pow(2).mean() / grad_accum).backward()
        with profile.phase("compute"):
            optimizer.step()
            optimizer.zero_grad()
        profile.step_done(step)
        if eval_every and step % eval_every == 0:
            with profile.phase("eval"), torch.no_grad():
                model(torch.randn(64, 16))
                time.sleep(0.02)
                with profile.phase("pictures"):  # nested: its time is not the evaluation's too
                    time.sleep(0.2)


def read_table(path: Path) -> dict[str, float]:
    with path.open() as f:
        return {row["metric"]: float(row["value"]) for row in csv.DictReader(f)}


def test_a_data_stall_is_named_and_the_trace_holds_the_window(tmp_path):
    profile = open_profile(tmp_path)
    train(profile, steps=8, data_s=0.01, eval_every=4)
    summary = profile.close()

    table = read_table(tmp_path / "profile" / "run_t0_s0_profile.csv")
    assert table["steps"] == 8
    assert table["data_share_of_step"] > 50, table
    assert table["data_per_step"] >= 20  # two micro-batches of 10 ms each, added up
    assert table["compute_per_step"] > 0 and "other_per_step" in table
    # the periodic phases are counted once each, outside the step time
    assert 0.04 <= table["eval_total"] < 0.2 and table["pictures_total"] >= 0.4, table
    assert table["other_per_step"] < 20, table
    assert table["rss_peak"] > 50 and "cuda_memory_peak" not in table
    assert "data loading takes" in summary and "the model waits on data" in summary
    assert "data.num_workers" in summary and "data wait" in summary and "eval" in summary

    trace = tmp_path / "profile" / "run_t0_s0" / "trace_steps4-6.pt.trace.json"
    assert [p.name for p in trace.parent.iterdir()] == [trace.name]
    events = json.loads(trace.read_text())["traceEvents"]
    names = {event.get("name") for event in events}
    assert {"data", "compute", "ProfilerStep#3", "ProfilerStep#5"} <= names, sorted(map(str, names))[:40]
    assert "ProfilerStep#2" not in names and "ProfilerStep#6" not in names  # warm-up and later: left out
    assert str(trace) in summary


def test_a_loop_that_computes_is_not_called_a_stall(tmp_path):
    profile = open_profile(tmp_path)
    model = torch.nn.Linear(256, 256)
    for step in range(1, 4):
        with profile.phase("data"):
            batch = torch.randn(4, 256)
        with profile.phase("compute"):
            for _ in range(200):
                model(batch).sum().backward()
        profile.step_done(step)
    summary = profile.close()
    table = read_table(tmp_path / "profile" / "run_t0_s0_profile.csv")
    assert table["compute_share_of_step"] > 80 and table["data_share_of_step"] < 30, table
    assert "the model does not wait on data" in summary
    assert "no trace: the window starts after 3 steps and this run took 3" in summary
    assert not (tmp_path / "profile" / "run_t0_s0").exists()


def test_a_run_that_ends_inside_the_window_keeps_what_was_recorded(tmp_path):
    profile = open_profile(tmp_path)
    train(profile, steps=5)
    profile.close()
    trace = tmp_path / "profile" / "run_t0_s0" / "trace_steps4-5.pt.trace.json"
    assert "traceEvents" in json.loads(trace.read_text())
    assert profile.close() is None  # a second close does nothing


def test_disabled_profile_does_nothing_and_writes_nothing(tmp_path):
    profile = open_profile(tmp_path, enabled=False)
    assert isinstance(profile.phase("data"), contextlib.nullcontext)
    assert profile.phase("data") is profile.phase("compute")  # one shared object: nothing per call
    train(profile, steps=7)
    assert profile.close() is None
    assert not (tmp_path / "profile").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_trace_has_kernels_and_the_table_gpu_memory(tmp_path):
    folder, table = tmp_path / "trace", tmp_path / "table.csv"
    profile = StepProfile(True, folder, table, torch.device("cuda"), "run_t0_s0")
    model = torch.nn.Linear(512, 512, device="cuda")
    for step in range(1, 7):
        with profile.phase("data"):
            batch = torch.randn(64, 512).cuda()
        with profile.phase("compute"):
            model(batch).sum().backward()
        profile.step_done(step)
    summary = profile.close()
    assert read_table(table)["cuda_memory_peak"] > 0 and "CUDA memory peak" in summary
    events = json.loads((folder / "trace_steps4-6.pt.trace.json").read_text())["traceEvents"]
    assert any(event.get("cat") == "kernel" for event in events)


@pytest.mark.slow
def test_profile_flag_writes_the_trace_the_table_and_the_summary(tmp_path):
    sets = ["train.max_step=6", "train.eval_frequency=6", "meta.max_session=1", "data.source.episodes=32"]
    overrides = [arg for key in [*sets, "data.val_pairs=32"] for arg in ("-s", key)]
    run_lab(
        "run", str(ROOT / "specs" / "laq.json"), "laq_debug", "dev", "--profile", *overrides, cwd=tmp_path
    )
    run_dir = only_run_dir(tmp_path / "data", "laq_debug")
    profile = run_dir / "log" / "profile"
    trace = profile / "laq_debug_t0_s0" / "trace_steps4-6.pt.trace.json"
    assert "traceEvents" in json.loads(trace.read_text())
    table = read_table(profile / "laq_debug_t0_s0_profile.csv")
    assert table["steps"] == 6 and table["eval_total"] > 0 and table["checkpoint_total"] > 0, table
    assert table["data_per_step"] > 0 and table["compute_per_step"] > table["data_per_step"], table
    log = (run_dir / "log" / "laq_debug_t0_s0.log").read_text()
    assert "data wait" in log and "data loading takes" in log and "trace_steps4-6.pt.trace.json" in log
