"""Faults and hostile inputs around the Hub and orchestration (issue #12): secret-looking spec names, unsafe run
names from the command line or the Hub's index, an upload that fails half way, run-remote --dry-run without
settings, where plot writes, and what plot-list says of failed or killed runs. Against real tiny runs and the
fake Hub on 127.0.0.1."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from typer.testing import CliRunner

from hlrp_lab.cli.main import app
from hlrp_lab.experiment.lab import run_lab
from hlrp_lab.lib.scrub import MASK, is_secret_name, mask_spec_file
from hlrp_lab.spec.spec_util import Mode
from tests.cli.test_remote import stub
from tests.conftest import tiny_spec_dict
from tests.fake_hub import FakeHub

REPO = "lab/results"
TOKEN = "hf_TestTokenValue0123456789"  # the fake_hub fixture's HF_TOKEN
SECRET = "SECRET999-wandb-key"
NAMES = ("rt_secret", "laq_token_ablation")  # spec names that look like secrets
ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shard_cache) -> Path:
    """A directory whose data/ holds one finished tiny run of each of NAMES."""
    root = tmp_path_factory.mktemp("secret_named_runs")
    spec_file = root / "specs.json"
    spec = tiny_spec_dict(shard_cache)
    spec["train"].update(max_step=4, log_frequency=2, eval_frequency=2)
    spec_file.write_text(json.dumps(dict.fromkeys(NAMES, spec)))
    cwd = Path.cwd()
    try:
        os.chdir(root)
        for name in NAMES:
            run_lab(spec_file, name, Mode("train"), {})
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def work(runs, tmp_path, monkeypatch) -> Path:
    """A private copy of the runs as the working directory."""
    shutil.copytree(runs / "data", tmp_path / "data", ignore=shutil.ignore_patterns("cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_dir(name: str) -> Path:
    (path,) = Path("data").glob(f"{name}_2*")
    return path


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def one_error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


# --- #2: secret-looking spec names ----------------------------------------------------------------------------


def test_mask_spec_file_masks_below_the_sections_only():
    spec = {
        "stage": "laq",
        "meta": {"variables": {"wandb_api_key": SECRET, "lr": 3}, "hf_token": SECRET},
        "model": {"x": {"hf_token": SECRET, "num_tokens": 2}, "heads": [{"api_key": SECRET}]},
    }
    masked = mask_spec_file({"rt_secret": spec, "laq_token_ablation": {"stage": "laq"}})
    assert masked == {
        "rt_secret": {
            "stage": "laq",
            "meta": {"variables": {"wandb_api_key": MASK, "lr": 3}, "hf_token": MASK},
            "model": {"x": {"hf_token": MASK, "num_tokens": 2}, "heads": [{"api_key": MASK}]},
        },
        "laq_token_ablation": {"stage": "laq"},
    }
    assert spec["meta"]["variables"]["wandb_api_key"] == SECRET  # a copy: the spec itself is untouched


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("laq_token_ablation", False),
        ("token_budget", False),
        ("rt_secret", True),
        ("SECRET_KEY", True),
        ("client_secret", True),
    ],
)
def test_a_secret_word_inside_a_name_does_not_make_it_secret(name, secret):
    assert is_secret_name(name) is secret


@pytest.mark.parametrize("name", NAMES)
def test_a_secret_looking_spec_name_uploads_the_whole_spec(fake_hub, work, name):
    path = run_dir(name)
    spec_file = path / "info" / f"{name}_spec.json"
    spec = json.loads(spec_file.read_text())
    spec[name]["meta"]["variables"] = {"wandb_api_key": SECRET, "note": "kept"}
    spec_file.write_text(json.dumps(spec))
    result = invoke("push", str(path))
    assert result.exit_code == 0, result.output

    uploaded = fake_hub.files(REPO)
    prefix = f"data/{path.name}/info"
    sent = json.loads(uploaded[f"{prefix}/{name}_spec.json"])
    spec[name]["meta"]["variables"]["wandb_api_key"] = MASK
    assert sent == spec  # every section there, only the secret masked
    trial_spec = json.loads(uploaded[f"{prefix}/{name}_t0_spec.json"])
    assert set(trial_spec) == {name} and trial_spec[name]["model"] == spec[name]["model"]
    metrics = json.loads((path / "info" / f"{name}_t0_trial_metrics.json").read_text())
    assert json.loads(uploaded[f"{prefix}/{name}_t0_trial_metrics.json"]) == metrics
    assert json.loads(uploaded["index.json"])[path.name]["spec_name"] == name
    assert not [f for f, data in uploaded.items() if SECRET.encode() in data]


# --- #1: names that become paths --------------------------------------------------------------------------------


@pytest.fixture
def dstack_stub(tmp_path, monkeypatch) -> Path:
    """A `dstack` on PATH that records that it ran; the record's path. Works from the checkout's root."""
    record, bin_dir = tmp_path / "dstack_ran", tmp_path / "bin"
    bin_dir.mkdir()
    stub(bin_dir / "dstack", f"open({str(record)!r}, 'w').close()")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_REPO", REPO)
    monkeypatch.chdir(ROOT)
    return record


@pytest.mark.parametrize("name", ["../../x", "two\nlines", "a" * 60, "Upper"])
def test_a_bad_run_remote_name_is_one_line_exit_2(dstack_stub, name):
    result = invoke("run-remote", "specs/laq.json", "laq_debug", "-n", name)
    assert result.exit_code == 2
    assert "dstack run names are 2-41 of a-z, 0-9 and -" in one_error_line(result)
    assert not dstack_stub.exists()


def test_push_checks_the_run_directory_name(fake_hub, work, monkeypatch):
    bad = Path("data") / "tiny run;x"
    shutil.copytree(run_dir("rt_secret"), bad)
    result = invoke("push", str(bad))
    assert result.exit_code == 2
    assert "error: run directory name 'tiny run;x': use letters, digits" in one_error_line(result)
    assert not [f for f in fake_hub.repos and fake_hub.files(REPO) if "tiny run" in f]

    path = run_dir("rt_secret").absolute()
    monkeypatch.chdir(path)  # `push .` uploads under the directory's own name
    result = invoke("push", ".")
    assert result.exit_code == 0, result.output
    assert f"data/{path.name}/info/rt_secret_spec.json" in fake_hub.files(REPO)


def hostile_repo(hub: FakeHub) -> None:
    """A repo whose index lists a good run and ``../../x``, with files for both."""
    HfApi(endpoint=hub.url, token=TOKEN).create_repo(REPO, repo_type="dataset")
    repo = hub.repos[("dataset", REPO)]
    index = {"good_2020_01_01_000000": {"spec_name": "good"}, "../../x": {"spec_name": "x"}}
    files = {
        **repo.commits[repo.branches["main"]],
        "index.json": json.dumps(index).encode(),
        "data/good_2020_01_01_000000/info/good_spec.json": b"{}",
        "data/../../x/info/x_spec.json": b"{}",
    }
    repo.commit("hostile index", files, None)


@pytest.mark.parametrize("args", [["*"], ["../../x"], ["*", "--list"]])
def test_pull_refuses_a_hub_index_entry_that_is_not_a_safe_name(fake_hub, tmp_path, monkeypatch, args):
    hostile_repo(fake_hub)
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    result = invoke("pull", *args)
    assert result.exit_code == 1
    line = one_error_line(result)
    assert (
        line.startswith(f"error: {REPO}/index.json: run '../../x': use letters, digits") and "nothing" in line
    )
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b"]  # nothing written, inside or out


def test_a_pull_that_fails_half_way_leaves_nothing_and_says_how_to_retry(fake_hub, tmp_path, monkeypatch):
    hostile_repo(fake_hub)
    repo = fake_hub.repos[("dataset", REPO)]
    files = dict(repo.commits[repo.branches["main"]])
    files["data/good_2020_01_01_000000/../../../escape.json"] = b"{}"  # the client refuses to write it
    repo.commit("a file that climbs out", files, None)
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    result = invoke("pull", "good")
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]  # after the client's progress bars
    assert line.startswith(f"error: pull from {REPO} failed (") and line.endswith(
        "retry with: hlrp-lab pull good"
    )
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["a", "a/b", "a/b/data"]


def test_a_run_in_the_index_without_files_is_one_line(fake_hub, tmp_path, monkeypatch):
    HfApi(endpoint=fake_hub.url, token=TOKEN).create_repo(REPO, repo_type="dataset")
    repo = fake_hub.repos[("dataset", REPO)]
    index = json.dumps({"ghost_2020_01_01_000000": {"spec_name": "ghost"}}).encode()
    repo.commit(
        "an index entry without files", {**repo.commits[repo.branches["main"]], "index.json": index}, None
    )
    monkeypatch.chdir(tmp_path)
    result = invoke("pull", "ghost")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        f"error: {REPO}: index.json lists ghost_2020_01_01_000000 but data/ghost_2020_01_01_000000/ holds no files"
    )
    assert list(Path("data").iterdir()) == []


# --- Section 2: an upload that fails half way -----------------------------------------------------------------


@pytest.mark.parametrize("fault", ["500", "drop", "drop-after"])
def test_a_failed_upload_keeps_the_run_says_so_in_one_line_and_push_again_completes(fake_hub, work, fault):
    path = run_dir("rt_secret")
    before = digests(path)
    fake_hub.commit_fault = fault  # "500" echoes the request's token in its error
    result = invoke("push", str(path))
    assert result.exit_code == 1
    line = one_error_line(result)
    assert line.startswith(f"error: upload of {path} to {REPO} failed (")
    assert line.endswith(f"); the local results are intact; retry with: hlrp-lab push {path}")
    assert TOKEN not in result.output
    assert digests(path) == before
    committed = any(f.startswith(f"data/{path.name}/") for f in fake_hub.files(REPO))
    assert committed == (fault == "drop-after")

    again = invoke("push", str(path))
    assert again.exit_code == 0, again.output
    uploaded = fake_hub.files(REPO)
    assert f"data/{path.name}/info/rt_secret_t0_trial_metrics.parquet" in uploaded
    assert list(json.loads(uploaded["index.json"])) == [path.name]
    assert not [name for name, data in uploaded.items() if TOKEN.encode() in data]
    assert digests(path) == before


# --- #11: run-remote --dry-run, plot's output folder, plot-list ------------------------------------------------


@pytest.mark.slow  # the spec check runs `hlrp-lab spec show` in a child process
def test_dry_run_needs_no_hub_settings_and_names_what_a_launch_needs(dstack_stub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HF_REPO")
    result = invoke("run-remote", "specs/laq.json", "laq_debug", "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert " apply -f .dstack/run-cpu-train.yml -y --detach --name laq-debug-" in lines[0]
    assert (
        "HF_TOKEN=(not set)" in lines and "HF_REPO=(not set)" in lines and "SPEC_FILE=specs/laq.json" in lines
    )
    assert lines[-1] == "missing for a real launch: HF_REPO, HF_TOKEN"
    assert not dstack_stub.exists()

    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no dstack either
    result = invoke("run-remote", "specs/laq.json", "laq_debug", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == (
        "missing for a real launch: HF_REPO, HF_TOKEN, dstack (uv tool install dstack)"
    )
    result = invoke("run-remote", "specs/laq.json", "laq_nope", "--dry-run")
    assert result.exit_code == 2 and "no spec named 'laq_nope'" in one_error_line(result)


def test_plot_writes_under_data_unless_told(work):
    name = run_dir("rt_secret").name
    result = invoke("plot", "-f", name)
    assert result.exit_code == 0, result.output
    assert "wrote data/plots/val_psnr_rt_secret.png" in result.output
    assert Path("data/plots/val_psnr_rt_secret.html").is_file() and not Path("docs").exists()
    assert "plots" not in invoke("plot-list").output  # data/plots is not taken for a run
    result = invoke("plot", "-f", name, "-o", "docs/plots")
    assert result.exit_code == 0 and Path("docs/plots/val_psnr_rt_secret.png").is_file()


def copy_run(run: Path, suffix: str, status: dict | None, sessions: bool) -> Path:
    """A copy of ``run`` as ``rt_secret_2030_01_01_000000_{suffix}``, with ``status`` as its info/status.json
    (none if None) and its session metrics removed unless ``sessions``."""
    path = shutil.copytree(run, Path("data") / f"rt_secret_2030_01_01_000000_{suffix}")
    (path / "info" / "status.json").unlink(missing_ok=True)
    if status is not None:
        (path / "info" / "status.json").write_text(json.dumps(status))
    if not sessions:
        for csv in (path / "info").glob("*_session_metrics.csv"):
            csv.unlink()
        for metrics in (path / "info").glob("*_trial_metrics.json"):  # as a run that never finished a trial
            metrics.unlink()
    return path


def test_plot_list_says_which_runs_failed_and_which_were_killed(work):
    error = "NonFiniteLossError: loss is nan at step 3"
    failed, completed = {"status": "failed", "error": error}, run_dir("rt_secret")
    copy_run(completed, "1", failed, sessions=False)
    copy_run(completed, "2", {"status": "running"}, sessions=False)
    copy_run(completed, "3", None, sessions=False)  # killed before status files existed
    copy_run(completed, "4", failed, sessions=True)  # failed in a later trial
    rows = {line.split()[0]: line for line in invoke("plot-list").output.splitlines()[1:]}
    stem = "rt_secret_2030_01_01_000000"
    assert rows[f"{stem}_1"].split()[3:6] == ["no", "-", "0"]
    assert rows[f"{stem}_1"].endswith(f"failed: {error}")
    assert rows[f"{stem}_2"].endswith("no metrics (killed or still running?)")
    assert rows[f"{stem}_3"].endswith("no metrics (killed or still running?)")
    assert rows[f"{stem}_4"].split()[3] == "yes" and rows[f"{stem}_4"].endswith(f"(the run failed: {error})")
    assert "val_psnr" in rows[completed.name] and "failed" not in rows[completed.name]  # as before

    result = invoke("plot", "-f", f"{stem}_1")
    assert result.exit_code == 1
    assert one_error_line(result).endswith(f"; the run failed: {error}")
