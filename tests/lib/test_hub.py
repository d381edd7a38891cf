"""Results on the Hub through the real huggingface_hub client, against a fake Hub on 127.0.0.1: upload, list,
pull, the dataset card, secret scrubbing, racing uploads, and failures that leave local results alone."""

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from hlrp_lab.cli.main import app
from hlrp_lab.experiment.lab import run_lab
from hlrp_lab.lib.bundle import run_bundle
from hlrp_lab.lib.scrub import is_secret_name
from hlrp_lab.spec.spec_util import Mode
from tests.conftest import tiny_spec_dict

REPO = "lab/results"
TOKEN = "hf_TestTokenValue0123456789"
runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shard_cache) -> Path:
    """A directory with data/ holding two finished tiny runs (train mode, one session each)."""
    root = tmp_path_factory.mktemp("hub_runs")
    spec_file = root / "specs.json"
    spec_file.write_text(json.dumps({"tiny": tiny_spec_dict(shard_cache)}))
    cwd = Path.cwd()
    try:
        os.chdir(root)
        for _ in range(2):
            run_lab(spec_file, "tiny", Mode("train"), {})
    finally:
        os.chdir(cwd)
    return root


def run_dirs(root: Path) -> list[Path]:
    return sorted((root / "data").glob("tiny_*"))


def copy_runs(runs: Path, tmp_path: Path) -> Path:
    """A private copy of the runs, as the working directory of a test."""
    shutil.copytree(runs / "data", tmp_path / "data", ignore=shutil.ignore_patterns("cache"))
    return tmp_path


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_push_list_pull_round_trip(fake_hub, runs, tmp_path, monkeypatch):
    monkeypatch.chdir(copy_runs(runs, tmp_path / "here"))
    first, second = run_dirs(Path.cwd())
    for run_dir in (first, second):
        result = invoke("push", str(run_dir.relative_to(Path.cwd())))
        assert result.exit_code == 0, result.output
        assert f"uploaded data/{run_dir.name} to " in result.output

    files = fake_hub.files(REPO)
    prefix = f"data/{first.name}"
    assert {f"{prefix}/info/tiny_spec.json", f"{prefix}/info/tiny_t0_s0_session_metrics.csv"} <= set(files)
    assert {
        f"{prefix}/info/tiny_t0_trial_metrics.parquet",
        f"{prefix}/info/tiny_t0_trial_metrics.csv",
    } <= set(files)
    assert f"{prefix}/info/tiny_t0_s0_session_metrics.parquet" in files
    assert f"{prefix}/graph/tiny_t0_trial_graph_val_psnr.png" in files
    assert not [f for f in files if "/model/" in f or "/log/" in f]  # no weights, optimizer state or logs

    index = json.loads(files["index.json"])
    assert set(index) == {first.name, second.name}
    assert index[first.name]["spec_name"] == "tiny" and index[first.name]["metric"] == "val_psnr"
    card = files["README.md"].decode()
    front = yaml.safe_load(card.split("---")[1])
    configs = {c["config_name"]: c["data_files"][0]["path"] for c in front["configs"]}
    assert configs[first.name] == f"{prefix}/info/*_trial_metrics.parquet"
    assert configs[f"{second.name}-sessions"] == f"data/{second.name}/info/*_session_metrics.parquet"
    assert f"| {second.name} | tiny | laq | train | 1 | val_psnr |" in card

    listed = invoke("list")
    assert listed.exit_code == 0 and f"2 runs in {REPO}" in listed.output and first.name in listed.output

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert "to pull" in invoke("pull", "tiny", "--list").output
    pulled = invoke("pull", "tiny")
    assert pulled.exit_code == 0, pulled.output
    for run_dir in (first, second):
        copy = Path("data") / run_dir.name
        assert f"pulled  data/{run_dir.name}" in pulled.output
        original = pd.read_csv(run_dir / "info" / "tiny_t0_s0_session_metrics.csv")
        assert pd.read_csv(copy / "info" / "tiny_t0_s0_session_metrics.csv").equals(original)
        assert pd.read_parquet(copy / "info" / "tiny_t0_s0_session_metrics.parquet").equals(original)
        trial = pd.read_parquet(copy / "info" / "tiny_t0_trial_metrics.parquet").iloc[0]
        metrics = json.loads((run_dir / "info" / "tiny_t0_trial_metrics.json").read_text())
        assert trial["val_psnr"] == pytest.approx(metrics["mean"]["val_psnr"])
    assert not list(Path("data").glob(".pull-*"))
    again = invoke("pull", first.name)
    assert again.exit_code == 0 and f"skipped data/{first.name}" in again.output
    assert invoke("pull", "nothing_like_it").exit_code == 1


def test_no_secret_reaches_any_uploaded_file(fake_hub, runs, tmp_path, monkeypatch):
    monkeypatch.chdir(copy_runs(runs, tmp_path))
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-key-4242")
    (Path(".env")).write_text("AWS_SECRET_ACCESS_KEY=aws-secret-from-dotenv-77\n")
    run_dir = run_dirs(Path.cwd())[0]
    spec_file = run_dir / "info" / "tiny_spec.json"  # a spec that recorded secrets, as -s values would be
    spec = json.loads(spec_file.read_text())
    spec["tiny"]["meta"]["variables"] = {"hf_token": TOKEN, "note": "key wandb-secret-key-4242 here"}
    spec_file.write_text(json.dumps(spec))
    with (run_dir / "info" / "tiny_t0_s0_session_metrics.csv").open("a") as f:
        f.write(f"# {TOKEN}\n")
    (run_dir / "graph" / "leak.png").write_bytes(b"\x89PNG" + b"aws-secret-from-dotenv-77")
    (run_dir / "log" / "tiny.log").write_text(f"token {TOKEN}\n")

    assert invoke("push", str(run_dir)).exit_code == 0
    uploaded = fake_hub.files(REPO)
    assert len(uploaded) > 10
    for name, data in uploaded.items():
        for secret in (TOKEN, "wandb-secret-key-4242", "aws-secret-from-dotenv-77"):
            assert secret.encode() not in data, name
    prefix = f"data/{run_dir.name}"
    variables = json.loads(uploaded[f"{prefix}/info/tiny_spec.json"])["tiny"]["meta"]["variables"]
    assert variables == {"hf_token": "***", "note": "key *** here"}
    spec = json.loads(uploaded[f"{prefix}/info/tiny_spec.json"])["tiny"]
    assert spec["model"]["quantizer"]["num_tokens"] == 2  # a spec key, not a secret
    assert f"{prefix}/graph/leak.png" not in uploaded  # binary: left out, not masked


def test_upload_models_adds_weights_never_optimizer_state(fake_hub, runs, tmp_path, monkeypatch):
    monkeypatch.chdir(copy_runs(runs, tmp_path))
    run_dir = run_dirs(Path.cwd())[0]
    assert invoke("push", str(run_dir), "--upload-models").exit_code == 0
    models = sorted(Path(f).name for f in fake_hub.files(REPO) if "/model/" in f)
    assert models == ["tiny_t0_s0_best.safetensors", "tiny_t0_s0_last.safetensors"]
    assert list((run_dir / "model").glob("*_state.pt"))  # it exists locally, and stayed there


def test_an_upload_racing_another_is_retried_on_top_of_it(fake_hub, runs, tmp_path, monkeypatch):
    monkeypatch.chdir(copy_runs(runs, tmp_path))
    first, second = run_dirs(Path.cwd())
    assert invoke("push", str(first)).exit_code == 0

    def other_client_commits(repo):  # lands between our read of the index and our commit
        repo.commit("someone else", {**repo.commits[repo.branches["main"]], "other.txt": b"x"}, None)

    fake_hub.before_commit = other_client_commits
    result = invoke("push", str(second))
    assert result.exit_code == 0, result.output
    files = fake_hub.files(REPO)
    assert "other.txt" in files and set(json.loads(files["index.json"])) == {first.name, second.name}


def test_run_upload_hf_uploads_after_training(fake_hub, tmp_path, monkeypatch, shard_cache):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "specs.json").write_text(json.dumps({"tiny": tiny_spec_dict(shard_cache)}))
    result = invoke("run", "specs.json", "tiny", "train", "--upload-hf")
    assert result.exit_code == 0, result.output
    (run_dir,) = Path("data").glob("tiny_*")
    assert f"data/{run_dir.name}/info/tiny_t0_trial_metrics.parquet" in fake_hub.files(REPO)


def test_a_failed_upload_keeps_the_run_and_prints_the_retry(tmp_path, monkeypatch, shard_cache):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_REPO", REPO)
    (tmp_path / "specs.json").write_text(json.dumps({"tiny": tiny_spec_dict(shard_cache)}))
    result = invoke("run", "specs.json", "tiny", "train", "--upload-hf")
    assert result.exit_code == 1
    (run_dir,) = Path("data").glob("tiny_*")
    assert f"the local results are intact; retry with: hlrp-lab push data/{run_dir.name}" in result.output
    assert (run_dir / "info" / "tiny_t0_trial_metrics.json").is_file()
    assert (run_dir / "model" / "tiny_t0_s0_best.safetensors").is_file()


def test_upload_settings_are_checked_before_training(tmp_path, monkeypatch, shard_cache):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_REPO", REPO)
    (tmp_path / "specs.json").write_text(json.dumps({"tiny": tiny_spec_dict(shard_cache)}))
    result = invoke("run", "specs.json", "tiny", "train", "--upload-hf")
    assert result.exit_code == 2 and "error: HF_TOKEN is not set" in result.output
    assert not Path("data").exists()
    (tmp_path / ".env").write_text(f"HF_TOKEN={TOKEN}\n")
    monkeypatch.delenv("HF_REPO")
    result = invoke("list")
    assert result.exit_code == 2 and "error: HF_REPO is not set" in result.output


def test_bundle_takes_results_only(runs):
    run_dir = run_dirs(runs)[0]
    bundle = run_bundle(run_dir, secrets=[])
    assert all(name.startswith(("info/", "graph/")) for name in bundle.files)
    assert "info/tiny_t0_trial_metrics.parquet" in bundle.files
    assert bundle.summary["mode"] == "train" and bundle.summary["trials"] == 1
    metrics = json.loads((run_dir / "info" / "tiny_t0_trial_metrics.json").read_text())
    assert bundle.summary["mean"] == pytest.approx(metrics["mean"]["val_psnr"])


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("HF_TOKEN", True),
        ("hf_token", True),
        ("token", True),
        ("WANDB_API_KEY", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("db-password", True),
        ("num_tokens", False),
        ("max_new_tokens", False),
        ("tokenizer", False),
        ("TOKENIZERS_PARALLELISM", False),
        ("keys", False),
    ],
)
def test_secret_names_are_whole_words(name, secret):
    assert is_secret_name(name) is secret
