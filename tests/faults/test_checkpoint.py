"""Faults around checkpoints and result files: NaN losses, corrupt or missing checkpoint files, a writer killed
mid-save, a full disk. Real tiny runs, real files, real subprocesses."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hlrp_lab.experiment.checkpoint import Checkpoints, save_weights
from hlrp_lab.experiment.control import Trial
from hlrp_lab.experiment.lab import run_lab
from hlrp_lab.lib.errors import CheckpointError, NonFiniteLossError
from hlrp_lab.lib.util import make_run_dir, temp_path
from hlrp_lab.spec.check import check_spec
from hlrp_lab.spec.spec_util import Mode
from tests.conftest import tiny_spec_dict

PREFIX = "tiny_t0_s0"
REPO = Path(__file__).resolve().parents[2]


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def run_trial(spec: dict, root: Path) -> Path:
    """Train ``spec`` as trial 0 in a new run directory under ``root``; return the run directory."""
    spec["meta"].update(spec_name="tiny", run_dir=str(make_run_dir(root, "tiny", "ts")))
    Trial(spec).run()
    return Path(spec["meta"]["run_dir"])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, shard_cache) -> Path:
    """A finished tiny run (checkpoints at steps 6 and 12) that each test copies before damaging it."""
    root = tmp_path_factory.mktemp("trained")
    cwd = Path.cwd()
    os.chdir(root)
    try:
        spec_file = root / "specs.json"
        spec_file.write_text(json.dumps({"tiny": check_spec(tiny_spec_dict(shard_cache))}))
        return (root / run_lab(spec_file, "tiny", Mode("train"), {})).resolve()
    finally:
        os.chdir(cwd)


@pytest.fixture
def run_copy(trained_run, tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return Path(shutil.copytree(trained_run, tmp_path / trained_run.name))


# --- #3: the NaN error names the checkpoint that exists, or none -----------------------------------------------


def nan_spec(tiny_spec: dict, eval_frequency: int) -> dict:
    tiny_spec["optim"].update(lr=1e30, warmup_steps=0)
    tiny_spec["train"].update(eval_frequency=eval_frequency, log_frequency=1, grad_clip=None, max_step=50)
    return tiny_spec


def test_non_finite_loss_before_any_checkpoint_says_none_was_written(tmp_path, tiny_spec):
    """Issue #12 (3): with eval_frequency 2 the loss is NaN before the first checkpoint; the error said
    'the last good checkpoint is .../last.safetensors' while model/ was empty."""
    with pytest.raises(NonFiniteLossError) as err:
        run_trial(nan_spec(tiny_spec, eval_frequency=2), tmp_path)
    assert list((tmp_path / "tiny_ts" / "model").iterdir()) == []
    assert "no checkpoint was written yet (the first is at step 2)" in str(err.value)
    assert "last good checkpoint" not in str(err.value)


def test_non_finite_loss_names_the_checkpoint_left_and_its_step(tmp_path, tiny_spec):
    with pytest.raises(NonFiniteLossError) as err:
        run_trial(nan_spec(tiny_spec, eval_frequency=1), tmp_path)
    weights = tmp_path / "tiny_ts" / "model" / f"{PREFIX}_last.safetensors"
    step = torch.load(weights.with_name(f"{PREFIX}_last_state.pt"), weights_only=True)["step"]
    assert f"the last good checkpoint is {weights} (step {step})" in str(err.value)


# --- #4: unusable checkpoints give one line naming the file and what to do ------------------------------------


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "truncated weights": (
        lambda model: truncate(model / f"{PREFIX}_last.safetensors"),
        rf"checkpoint file \S+/{PREFIX}_last.safetensors is corrupt \(SafetensorError: ",
    ),
    "truncated state": (
        lambda model: truncate(model / f"{PREFIX}_last_state.pt"),
        rf"checkpoint file \S+/{PREFIX}_last_state.pt is corrupt \(",
    ),
    "missing state": (
        lambda model: (model / f"{PREFIX}_last_state.pt").unlink(),
        rf"checkpoint file \S+/{PREFIX}_last_state.pt is missing \(its {PREFIX}_last.safetensors is there\)",
    ),
    "missing weights": (
        lambda model: (model / f"{PREFIX}_last.safetensors").unlink(),
        rf"checkpoint file \S+/{PREFIX}_last.safetensors is missing \(its {PREFIX}_last_state.pt is there\)",
    ),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_resume_from_an_unusable_last_checkpoint_is_one_line_and_leaves_best(run_copy, damage):
    """Issue #12 (4): a truncated `last` gave a raw SafetensorError traceback on train@RUN_DIR; a missing
    weights file with its state present was ignored and the session silently trained again from step 0."""
    model = run_copy / "model"
    best = {p.name: p.read_bytes() for p in model.glob(f"{PREFIX}_best*")}
    damage_fn, message = DAMAGE[damage]
    damage_fn(model)
    with pytest.raises(CheckpointError, match=message) as err:
        run_lab(Path("unused.json"), "tiny", Mode("train", run_copy), {})
    text = str(err.value)
    assert "\n" not in text
    present = " and ".join(sorted(p.name for p in model.glob(f"{PREFIX}_last*")))
    assert f"remove {present} to train this session again from step 0" in text
    assert f"{PREFIX}_best.safetensors is untouched" in text
    assert {p.name: p.read_bytes() for p in model.glob(f"{PREFIX}_best*")} == best


def test_resume_with_a_model_that_does_not_match_the_weights(run_copy):
    """Issue #12 (4): weights of another shape than the spec's model gave load_model's multi-line RuntimeError."""
    with pytest.raises(CheckpointError) as err:
        run_lab(Path("unused.json"), "tiny", Mode("train", run_copy), {"model.encoder.channels": [16, 48]})
    text = str(err.value)
    assert "\n" not in text
    assert f"{PREFIX}_last.safetensors does not match the spec's model (RuntimeError: " in text
    assert "size mismatch" in text and "a -s model.* override?" in text


def test_eval_of_a_corrupt_best_checkpoint_is_one_line(run_copy):
    """Issue #12 (4): eval mode on a truncated `best` gave a raw SafetensorError traceback."""
    truncate(run_copy / "model" / f"{PREFIX}_best.safetensors")
    with pytest.raises(CheckpointError, match=rf"{PREFIX}_best.safetensors is corrupt") as err:
        run_lab(Path("unused.json"), "tiny", Mode("eval", run_copy), {})
    assert "\n" not in str(err.value)
    assert f"copy {PREFIX}_last.safetensors and {PREFIX}_last_state.pt over these" in str(err.value)


def test_a_run_saved_before_stages_declared_their_keys_still_evaluates(run_copy):
    """Saved specs of every stage held finetune's keys (rollout, train.init_from, ...) with their defaults; an
    LAQ spec now refuses them, but the runs that saved them still load."""
    path = run_copy / "info" / "tiny_spec.json"
    saved = json.loads(path.read_text())
    saved["tiny"]["rollout"] = {"episodes": 10, "max_steps": 150, "seed": 1000, "workers": 2, "videos": 2}
    saved["tiny"]["train"].update(init_from=None, eval_rollouts=0)
    saved["tiny"]["data"]["action_chunk"] = 1
    path.write_text(json.dumps(saved))
    run_lab(Path("unused.json"), "tiny", Mode("eval", run_copy), {})
    metrics = json.loads((run_copy / "info" / "tiny_t0_eval_metrics.json").read_text())
    assert metrics["mean"]["val_psnr"] > 0


# --- Section 2: a writer killed mid-save, stray temporary files -----------------------------------------------

WRITER = """
import sys, torch
from pathlib import Path
from hlrp_lab.experiment.checkpoint import Checkpoints

model = torch.nn.Linear(1024, 2048)
checkpoints = Checkpoints(Path(sys.argv[1]), "x")
step = 0
while True:
    step += 1
    with torch.no_grad():
        model.weight.fill_(step)
    checkpoints.save("last", model, {"step": step, "optimizer": {"moment": torch.full((2048, 1024), step)}})
"""


@pytest.mark.parametrize("killed_in", ["x_last.safetensors", "x_last_state.pt"])
def test_a_writer_killed_mid_save_never_leaves_a_half_written_checkpoint(tmp_path, killed_in):
    """SIGKILL a process that saves 8 MB checkpoints in a loop while it writes ``killed_in``'s temporary file:
    the checkpoint on disk loads whole (weights and state of one step) and the stray temporary file is removed."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=REPO)
    try:
        wait_for(lambda: (tmp_path / "x_last_state.pt").is_file(), proc)  # one checkpoint is complete
        wait_for(lambda: temp_path(tmp_path / killed_in).exists(), proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    checkpoints = Checkpoints(tmp_path, "x")
    checkpoints.recover()
    assert temp_files(tmp_path) == []
    model = torch.nn.Linear(1024, 2048)
    state = checkpoints.load("last", model)
    assert state["step"] >= 1 and torch.all(model.weight == state["step"])
    assert torch.all(state["optimizer"]["moment"] == state["step"])


def wait_for(condition, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the writer ended with {proc.returncode}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.0005)


def test_recover_completes_a_save_killed_between_its_two_renames(tmp_path):
    """Killed after the weights were renamed into place but before the state was: the whole state file is
    renamed too, so `last` loads at the new step instead of failing on a step mismatch."""
    checkpoints = Checkpoints(tmp_path, "x")
    model = torch.nn.Linear(3, 2)
    checkpoints.save("last", model, {"step": 1})
    save_weights(model, checkpoints.weights_path("last"), {"step": "2"})
    torch.save({"step": 2}, temp_path(checkpoints.state_path("last")))
    checkpoints.recover()
    assert temp_files(tmp_path) == []
    assert checkpoints.load("last", torch.nn.Linear(3, 2))["step"] == 2


def test_recover_removes_stray_temporary_files_and_keeps_the_checkpoint(tmp_path):
    checkpoints = Checkpoints(tmp_path, "x")
    checkpoints.save("last", torch.nn.Linear(3, 2), {"step": 1})
    for tag in ("last", "best"):
        temp_path(checkpoints.weights_path(tag)).write_bytes(b"half a safetensors header")
        temp_path(checkpoints.state_path(tag)).write_bytes(b"PK\x03\x04 half a zip")
    checkpoints.recover()
    assert temp_files(tmp_path) == []
    assert checkpoints.load("last", torch.nn.Linear(3, 2))["step"] == 1


def test_resume_removes_stray_temporary_files(run_copy):
    """train@RUN_DIR cleans what a killed writer left before it restores `last`."""
    model = run_copy / "model"
    stray = model / f".{PREFIX}_last.safetensors.tmp"
    stray.write_bytes(b"half")
    run_lab(Path("unused.json"), "tiny", Mode("train", run_copy), {})
    assert temp_files(model) == []


# --- Section 2: a full disk (file size limit) while writing checkpoints, tables and JSON ---------------------

FULL_DISK = """
import json, resource, signal, sys, torch
import pandas as pd
from pathlib import Path
from hlrp_lab.experiment.checkpoint import Checkpoints
from hlrp_lab.experiment.results import save_table
from hlrp_lab.lib.errors import RunError
from hlrp_lab.lib.util import write_json

root = Path(sys.argv[1])
checkpoints = Checkpoints(root / "model", "x")
small = torch.nn.Linear(4, 4)
checkpoints.save("last", small, {"step": 1})
write_json(root / "info.json", {"step": 1})
save_table(pd.DataFrame({"trial": [0]}), root / "table")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so that a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
attempts = {
    "weights": lambda: checkpoints.save("last", torch.nn.Linear(256, 256), {"step": 2}),
    "state": lambda: checkpoints.save("last", small, {"step": 2, "big": torch.zeros(64 * 1024)}),
    "json": lambda: write_json(root / "info.json", {"step": 2, "big": "x" * 100_000}),
    "table": lambda: save_table(pd.DataFrame({"trial": range(20_000)}), root / "table"),
}
errors = {}
for name, attempt in attempts.items():
    try:
        attempt()
    except RunError as err:
        errors[name] = str(err)
print(json.dumps(errors))
"""


def test_a_full_disk_keeps_the_previous_files_and_says_what_failed_in_one_line(tmp_path):
    """Writes past a file size limit (EFBIG, as a full disk gives ENOSPC): the checkpoint, JSON and table
    written before stay whole, no temporary file is left, and each error is one line naming the file."""
    (tmp_path / "model").mkdir()
    out = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(tmp_path)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    errors = json.loads(out.stdout.strip().splitlines()[-1])
    model = tmp_path / "model"
    expected = {
        "weights": f"could not write {model}/x_last.safetensors: [Errno 27] File too large; "
        f"free space and resume with train@{tmp_path}",
        "state": f"could not write {model}/x_last_state.pt: [Errno 27] File too large; "
        f"free space and resume with train@{tmp_path}",
        "json": f"could not write {tmp_path}/info.json: [Errno 27] File too large; free space and run again",
    }
    assert {k: errors.get(k) for k in expected} == expected
    assert errors["table"].startswith(f"could not write {tmp_path}/table.csv: [Errno 27] File too large")
    assert temp_files(model) == [] and temp_files(tmp_path) == []
    assert Checkpoints(model, "x").load("last", torch.nn.Linear(4, 4))["step"] == 1
    assert json.loads((tmp_path / "info.json").read_text()) == {"step": 1}
    assert (tmp_path / "table.csv").read_text() == "trial\n0\n"
