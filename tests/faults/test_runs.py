"""Fault suite, run directories: hostile spec names, runs that fail on their data or later, which run
`latest:` means, two runs in the same second, secrets in saved specs, and threads sized to the CPUs we have."""

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hlrp_lab.cli.main import app
from hlrp_lab.experiment.control import Trial
from hlrp_lab.experiment.lab import run_lab
from hlrp_lab.lib import util
from hlrp_lab.lib.cpus import cgroup_quota
from hlrp_lab.lib.errors import NonFiniteLossError, SpecError
from hlrp_lab.lib.layout import RunLayout
from hlrp_lab.lib.runs import newest_run, read_status, resolve_reference, write_spec
from hlrp_lab.lib.util import make_run_dir
from hlrp_lab.spec.check import check_spec
from hlrp_lab.spec.spec_util import Mode


def write_specs(path: Path, specs: dict[str, dict]) -> Path:
    path.write_text(json.dumps(specs))
    return path


def runs_under(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


@pytest.mark.parametrize("name", ["../../escape", "a/b", ".hidden", "x" * 300, "sp ace", ""])
def test_a_hostile_spec_name_writes_nothing_and_exits_2(tmp_path, monkeypatch, tiny_spec, name):
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    spec_file = write_specs(work / "specs.json", {name: tiny_spec})
    result = CliRunner().invoke(app, ["run", str(spec_file), name, "dev"])
    assert result.exit_code == 2, result.output
    assert "spec name" in result.output and "Traceback" not in result.output
    assert result.output.count("\n") == 1  # one line
    assert runs_under(tmp_path) == ["work"] and runs_under(work) == ["specs.json"]


def test_a_data_failure_is_found_before_the_run_directory_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    root = Path(__file__).parents[2]
    result = CliRunner().invoke(
        app,
        ["run", str(root / "specs" / "laq.json"), "laq_debug", "dev"]
        + ["-s", "data.source=null", "-s", f"data.shards={tmp_path / 'empty'}"],
    )
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "Traceback" not in result.output
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").glob("laq_debug_*"))


def test_a_failed_run_is_marked_and_latest_skips_it(tmp_path, monkeypatch, tiny_spec):
    monkeypatch.chdir(tmp_path)
    spec_file = write_specs(tmp_path / "specs.json", {"tiny": tiny_spec})
    good = run_lab(spec_file, "tiny", Mode("train"), {})
    assert read_status(RunLayout(good, "tiny"))["status"] == "completed"
    with pytest.raises(NonFiniteLossError):
        run_lab(spec_file, "tiny", Mode("train"), {"optim.lr": 1e30, "optim.warmup_steps": 0})
    failed = newest_run_dir_by_name(Path("data"), "tiny")
    assert failed != good
    status = read_status(RunLayout(failed, "tiny"))
    assert status["status"] == "failed" and status["error"].startswith("NonFiniteLossError: ")
    assert "\n" not in status["error"]
    assert newest_run("tiny") == good
    assert resolve_reference("latest:tiny", "train.init_from").run_dir == good


def newest_run_dir_by_name(root: Path, spec_name: str) -> Path:
    return max(root.glob(f"{spec_name}_*"))


def test_latest_means_the_newest_completed_non_dev_run(tmp_path, monkeypatch, tiny_spec):
    monkeypatch.chdir(tmp_path)
    spec_file = write_specs(tmp_path / "specs.json", {"tiny": tiny_spec})
    trained = run_lab(spec_file, "tiny", Mode("train"), {})
    dev = run_lab(spec_file, "tiny", Mode("dev"), {"train.dev_max_step": 6})
    assert dev > trained  # newer
    assert resolve_reference("latest:tiny", "k").run_dir == trained
    assert resolve_reference("latest-dev:tiny", "k").run_dir == dev
    logged = []
    from loguru import logger

    sink = logger.add(logged.append, format="{message}")
    try:
        resolve_reference("latest:tiny", "train.init_from")
    finally:
        logger.remove(sink)
    assert f"train.init_from: latest:tiny is {trained} (train run, 12 steps)" in logged[0]


def test_latest_with_only_dev_runs_names_the_dev_form(tmp_path, monkeypatch, tiny_spec):
    monkeypatch.chdir(tmp_path)
    run_lab(write_specs(tmp_path / "specs.json", {"tiny": tiny_spec}), "tiny", Mode("dev"), {})
    with pytest.raises(SpecError, match="no completed non-dev run of 'tiny'.*latest-dev:tiny"):
        resolve_reference("latest:tiny", "train.init_from")


def make_dirs_at(args: tuple[str, str]) -> str:
    root, ts = args
    return make_run_dir(Path(root), "same", ts).name


def test_two_runs_started_in_the_same_second_get_distinct_directories(tmp_path, monkeypatch, tiny_spec):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        names = pool.map(make_dirs_at, [(str(tmp_path / "raw"), "2026_11_30_120000")] * 4)
    assert sorted(names) == [f"same_2026_11_30_120000{s}" for s in ("", "_1", "_2", "_3")]

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("hlrp_lab.experiment.lab.timestamp", lambda: "2026_11_30_120000")
    spec_file = write_specs(tmp_path / "specs.json", {"tiny": tiny_spec})
    first = run_lab(spec_file, "tiny", Mode("train"), {})
    second = run_lab(spec_file, "tiny", Mode("train"), {})
    assert (first.name, second.name) == ("tiny_2026_11_30_120000", "tiny_2026_11_30_120000_1")
    assert newest_run("tiny") == second


def test_saved_specs_mask_secret_values_but_keep_the_spec(tmp_path, tiny_spec):
    run_dir = make_run_dir(tmp_path, "rt_secret", "2026_11_30_120000")
    tiny_spec["meta"]["variables"] = {"wandb_api_key": "SECRET999", "lr": 0.1}
    write_spec(RunLayout(run_dir, "rt_secret").spec_file, "rt_secret", tiny_spec)
    text = (run_dir / "info" / "rt_secret_spec.json").read_text()
    saved = json.loads(text)["rt_secret"]
    assert "SECRET999" not in text
    assert saved["meta"]["variables"] == {"wandb_api_key": "***", "lr": 0.1}
    assert saved["model"] == tiny_spec["model"] and saved["stage"] == "laq"


def test_sessions_use_the_cpus_they_have(tmp_path, tiny_spec):
    quota = tmp_path / "cpu.max"
    for text, cpus in (("150000 100000\n", 2), ("max 100000\n", None), ("50000 100000", 1)):
        quota.write_text(text)
        assert cgroup_quota(quota) == cpus
    assert cgroup_quota(tmp_path / "absent") is None
    code = "import os; os.sched_setaffinity(0, {0}); from hlrp_lab.lib.cpus import available_cpus as a; print(a())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"

    before = torch.get_num_threads()
    run_dir = make_run_dir(tmp_path / "data", "tiny", util.timestamp())
    tiny_spec["meta"].update(spec_name="tiny", run_dir=str(run_dir))
    try:
        Trial(tiny_spec, cpus=1).run()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs sched_getaffinity")
def test_the_trial_default_is_the_affinity_not_the_machine():
    code = (
        "import os; os.sched_setaffinity(0, {0});"
        "from hlrp_lab.experiment.control import Trial;"
        "print(Trial({'meta': {'run_dir': '.', 'spec_name': 'x', 'trial': 0}, 'stage': 'laq'}).cpus)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_a_foundation_run_without_its_tokenizer_is_refused_before_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = Path(__file__).parents[2]
    finetune = json.loads((root / "specs" / "finetune.json").read_text())["ft_debug"]
    finetune["data"]["source"].update(episodes=8, episode_length=6)
    finetune["data"].update(image_size=32, val_split=0.5)
    checked = check_spec(finetune)["model"]
    foundation = {"stage": "foundation", "model": {k: checked[k] for k in ("vla", "latent_head")}}
    run_dir = make_run_dir(Path("data"), "vla", "2026_11_30_120000")
    for name in ("vla_spec.json", "vla_t0_spec.json"):
        (run_dir / "info" / name).write_text(json.dumps({"vla": foundation}))
    (run_dir / "info" / "status.json").write_text('{"status": "completed"}')
    (run_dir / "model" / "vla_t0_s0_best.safetensors").write_bytes(b"w")  # its tokenizer folder is gone
    spec_file = write_specs(tmp_path / "specs.json", {"ft": finetune})
    with pytest.raises(SpecError, match=r"train.init_from: data/vla_\S+ has no tokenizer vla_t0_tokenizer/"):
        run_lab(spec_file, "ft", Mode("train"), {"train.init_from": "latest:vla"})
    assert runs_under(Path("data")) == ["cache", run_dir.name]
