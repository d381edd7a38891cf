"""Real multi-rank runs through the CLI: torchrun starts 2 gloo ranks on this CPU.

- ``laq_debug`` (pair level, DDP) on 2 ranks trains like 1 rank at the same global batch and seed.
- Only rank 0 writes the files the ranks share, each rank logs to its own file (an audit hook records every
  file each rank opens for writing, renames or creates).
- A rank killed mid-run ends the job promptly with a line naming it.
- ``vla_debug`` (FSDP2) on 2 ranks, SIGKILLed after its first sharded checkpoint, resumes on 1 rank and on 2
  ranks (launched by hand with torchrun) to the metrics of an uninterrupted run; its consolidated `best`
  evaluates in one process.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.processes import is_running

ROOT = Path(__file__).parents[2]
LAQ, FOUNDATION = str(ROOT / "specs" / "laq.json"), str(ROOT / "specs" / "foundation.json")
# One session, few held-out pairs (each evaluation goes through all of them) and a log row every 5 steps.
SHORT = ["-s", "meta.max_session=1", "-s", "data.val_pairs=64", "-s", "train.log_frequency=5"]
# Float tolerance of 2 ranks against 1: the same pairs and noise, but gradients are averaged over two halves
# of the batch (sum order differs) and float32 Adam steps amplify the last bits a little per step; measured
# differences are ~1e-7 relative after 20 steps, so 1e-4 leaves room without hiding a real difference.
RTOL = 1e-4
AUDIT_HOOK = """
import os, sys
_rank, _out = os.environ.get("RANK"), os.environ.get("HLRP_TEST_AUDIT")
if _rank is not None and _out:
    _log = open(os.path.join(_out, f"rank{_rank}.txt"), "a", buffering=1)
    def _audit(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) and args[1] and any(c in str(args[1]) for c in "wax+"):
            _log.write(f"{os.path.abspath(os.fsdecode(args[0]))}\\n")
        elif event == "open" and isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and isinstance(args[0], (str, bytes, os.PathLike)):
            _log.write(f"{os.path.abspath(os.fsdecode(args[0]))}\\n")
        elif event in ("os.rename", "os.mkdir"):
            _log.write(f"{os.path.abspath(os.fsdecode(args[1] if event == 'os.rename' else args[0]))}\\n")
    sys.addaudithook(_audit)
"""

pytestmark = pytest.mark.slow


def lab(
    *args: str, cwd: Path, extra_env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1", **(extra_env or {})}
    out = subprocess.run(
        [sys.executable, "-m", "hlrp_lab", *args],
        cwd=cwd,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def start_lab(args: list[str], cwd: Path, **popen) -> subprocess.Popen:
    """``hlrp-lab ARGS`` started in a session of its own (so that the test can kill it and its ranks)."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "hlrp_lab", *args], cwd=cwd, env=env, start_new_session=True, **popen
    )


def run_dir_of(out: subprocess.CompletedProcess, cwd: Path) -> Path:
    line = next(line for line in out.stdout.splitlines() if line.startswith("run directory: "))
    return cwd / line.removeprefix("run directory: ")


def last_row(run_dir: Path, spec: str) -> pd.Series:
    return pd.read_csv(run_dir / "info" / f"{spec}_t0_s0_session_metrics.csv").iloc[-1]


def assert_close(got: pd.Series, want: pd.Series, keys: list[str], rtol: float) -> None:
    for key in keys:
        assert got[key] == pytest.approx(want[key], rel=rtol, abs=1e-6), (key, got[key], want[key])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One folder for the module's runs: the procedural shards are generated once."""
    return tmp_path_factory.mktemp("distributed")


def laq_args(mode: str = "train") -> list[str]:
    small = ["-s", "data.source.episodes=64", "-s", "train.max_step=20", "-s", "train.eval_frequency=10"]
    return ["run", LAQ, "laq_debug", mode, *SHORT, *small]


def test_laq_on_two_ranks_trains_like_one_and_only_rank0_writes_shared_files(workdir, tmp_path):
    one = run_dir_of(lab(*laq_args(), cwd=workdir), workdir)
    audit = tmp_path / "audit"
    audit.mkdir()
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(AUDIT_HOOK)
    hooked = {
        "PYTHONPATH": f"{tmp_path / 'hook'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "HLRP_TEST_AUDIT": str(audit),
    }
    two_sessions = ["-s", "meta.max_session=2"]  # one after the other, each on both ranks
    out = lab(*laq_args(), *two_sessions, "--nproc-per-node", "2", cwd=workdir, extra_env=hooked)
    two = run_dir_of(out, workdir)

    keys = [
        "loss",
        "reconstruction_loss",
        "grad_norm",
        "val_mse",
        "val_psnr",
        "psnr_gain",
        "probe_r2",
        "perplexity",
    ]
    assert_close(last_row(two, "laq_debug"), last_row(one, "laq_debug"), keys, RTOL)
    assert last_row(two, "laq_debug")["step"] == 20

    trial = json.loads((two / "info" / "laq_debug_t0_trial_metrics.json").read_text())
    assert len(trial["sessions"]) == 2 and trial["sessions"][1]["step"] == 20
    logs = sorted(p.name for p in (two / "log").iterdir())
    rank_logs = [f"laq_debug_t0_s{s}_rank{r}.log" for s in (0, 1) for r in (0, 1)]
    assert logs == ["laq_debug.log", *rank_logs]
    assert "rank 1/2" in (two / "log" / "laq_debug_t0_s1_rank1.log").read_text()

    written = {
        rank: {Path(line) for line in (audit / f"rank{rank}.txt").read_text().split()} for rank in (0, 1)
    }
    in_run = {rank: {p for p in paths if p.is_relative_to(two.resolve())} for rank, paths in written.items()}
    rank1_files = {p.relative_to(two.resolve()).as_posix() for p in in_run[1]}
    own_logs = {"log/laq_debug_t0_s0_rank1.log", "log/laq_debug_t0_s1_rank1.log"}
    assert rank1_files - {"log"} == own_logs, rank1_files  # "log": its own logs' folder
    rank0_files = {p.relative_to(two.resolve()).as_posix() for p in in_run[0]}
    for shared in (
        "info/laq_debug_spec.json",
        "info/laq_debug_t0_s0_session_metrics.csv",
        "info/laq_debug_t0_s1_session_metrics.csv",
        "info/laq_debug_t0_trial_metrics.json",
        "model/laq_debug_t0_s0_last.safetensors",
        "graph/laq_debug_t0_s0_session_graph_loss.png",
    ):
        assert shared in rank0_files, (shared, sorted(rank0_files))


def test_a_killed_rank_ends_the_job_promptly_and_is_named(workdir):
    args = [*laq_args(), "-s", "train.max_step=100000", "--nproc-per-node", "2"]
    proc = start_lab(args, workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pid, run_dir = rank_pid(workdir, rank=1, started=time.time(), timeout=240)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = proc.communicate(timeout=120)
        ended_after = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert ended_after < 60, ended_after  # torchrun stops rank 0, which was waiting in a collective
    assert f"error: rank 1 of 2 (pid {pid}) was killed by SIGKILL" in stderr, stderr[-3000:]
    status = json.loads((run_dir / "info" / "status.json").read_text())  # written by the launcher
    assert status["status"] == "failed" and status["error"].startswith(
        f"rank 1 of 2 (pid {pid}) was killed by SIGKILL"
    )


def rank_pid(workdir: Path, rank: int, started: float, timeout: float) -> tuple[int, Path]:
    """The pid rank ``rank`` of the newest laq_debug run logs once it trains, and the run directory."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for log in (workdir / "data").glob(f"laq_debug_*/log/laq_debug_t0_s0_rank{rank}.log"):
            if log.stat().st_mtime < started:
                continue
            for line in log.read_text().splitlines():
                if f"rank {rank}/2 (pid " in line:
                    return int(line.split("(pid ")[1].split(")")[0]), log.parents[1]
        time.sleep(0.2)
    raise AssertionError(f"rank {rank} did not start training within {timeout} s")


# Checkpoints every 10 steps: a SIGKILL or SIGUSR1 after the first (seen by polling) leaves steps to resume even
# when this machine is busy and the poll is late.
VLA_STEPS = 50


def vla_args(*extra: str) -> list[str]:
    return [
        "run",
        FOUNDATION,
        "vla_debug",
        "train",
        *SHORT,
        "-s",
        f"train.max_step={VLA_STEPS}",
        "-s",
        "train.eval_frequency=10",
        *extra,
    ]


def test_fsdp_vla_resumes_on_one_and_two_ranks_after_sigkill(workdir, tmp_path):
    lab(*laq_args(), cwd=workdir)  # the LAQ run whose codes label vla_debug's data (latest:laq_debug)
    whole = run_dir_of(lab(*vla_args("--nproc-per-node", "2"), cwd=workdir), workdir)
    assert (whole / "model" / f"vla_debug_t0_s0_last_step{VLA_STEPS}.dcp" / "__1_0.distcp").is_file()

    killed = sigkill_after_first_checkpoint(workdir, vla_args("--nproc-per-node", "2"))
    state = torch_load(killed / "model" / "vla_debug_t0_s0_last_state.pt")
    assert state["step"] < VLA_STEPS and state["shards"] == f"vla_debug_t0_s0_last_step{state['step']}.dcp"
    on_two = tmp_path / killed.name
    shutil.copytree(killed, on_two)

    lab("run", FOUNDATION, "vla_debug", f"train@{killed}", cwd=workdir)
    by_hand = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "hlrp_lab"]
    out = subprocess.run(
        [sys.executable, *by_hand, "run", FOUNDATION, "vla_debug", f"train@{on_two}"],
        cwd=workdir,
        env={**os.environ, "TQDM_DISABLE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # as a user launches it with torchrun
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.count("run directory: ") == 1  # rank 0 reports for the job
    keys = ["loss", "val_loss", "val_token_acc", "val_exact_match"]
    for resumed in (killed, on_two):
        # 1e-3: the resumed part trains up to ~40 steps with sums in another order (1 rank vs 2 shards)
        assert_close(last_row(resumed, "vla_debug"), last_row(whole, "vla_debug"), keys, 1e-3)
        assert last_row(resumed, "vla_debug")["step"] == VLA_STEPS

    best = torch_load(on_two / "model" / "vla_debug_t0_s0_best_state.pt")
    lab("run", FOUNDATION, "vla_debug", f"eval@{on_two}", cwd=workdir)
    evaluated = json.loads((on_two / "info" / "vla_debug_t0_eval_metrics.json").read_text())["mean"]
    assert evaluated["step"] == best["step"]
    for key in ("val_loss", "val_token_acc", "val_exact_match"):
        assert evaluated[key] == pytest.approx(best["metrics"][key], rel=1e-5), key


def assert_ranks_end(run_dir: Path, timeout: float = 10) -> None:
    """Every rank of the run (pids from their logs) ends soon after its launcher: torchrun gives each rank a
    session of its own, so only the rank's own parent-death signal stops it writing on into the run."""
    pids = {
        int(pid)
        for log in (run_dir / "log").glob("*_rank*.log")
        for pid in re.findall(r"rank \d+/\d+ \(pid (\d+)\)", log.read_text())
    }
    assert len(pids) == 2, pids
    deadline = time.monotonic() + timeout
    while (alive := {pid for pid in pids if is_running(pid)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, f"ranks {alive} outlived their killed launcher"


def sigkill_after_first_checkpoint(workdir: Path, args: list[str]) -> Path:
    """Start the run, SIGKILL the launcher's process group once the first `last` checkpoint is committed (its
    ranks must end with it); the run directory."""
    started = time.time()
    proc = start_lab(args, workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            states = [
                p
                for p in (workdir / "data").glob("vla_debug_*/model/vla_debug_t0_s0_last_state.pt")
                if p.stat().st_mtime >= started
            ]
            if states:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                assert_ranks_end(states[0].parents[1])
                return states[0].parents[1]
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("no checkpoint was written before the run ended")


def torch_load(path: Path) -> dict:
    import torch

    return torch.load(path, weights_only=True)


def lora_base(folder: Path) -> str:
    """A small SmolVLM saved as a `pretrained` directory with its tokenizer, as a hub download leaves one."""
    from hlrp_lab.components.vla import VLAS
    from hlrp_lab.components.vla.tokenizer import local_tokenizer

    tokenizer = local_tokenizer(["push the block", "open the drawer"])
    backbone = VLAS.build({"name": "SmolVLM"}, "model.vla", tokenizer=tokenizer)
    backbone.model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_lora_on_a_pretrained_base_stops_on_sigusr1_on_two_ranks_and_resumes(workdir, tmp_path):
    """LoRA under FSDP on 2 ranks: SIGUSR1 to the launcher (as Slurm sends it before the time limit) makes every
    rank write `last` and the job exit 75; train@ resumes it on 2 ranks; checkpoints hold adapters only, and
    `best` evaluates and merges into plain weights."""
    if not list((workdir / "data").glob("laq_debug_*/info/status.json")):
        lab(*laq_args(), cwd=workdir)  # the LAQ run whose codes label vla_debug's data
    base = lora_base(tmp_path / "base")
    lora = ["-s", f"model.vla.pretrained={base}", "-s", 'model.vla.lora={"r": 4, "alpha": 8}']
    args = vla_args(*lora, "--nproc-per-node", "2")
    started = time.time()
    proc = start_lab(args, workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        state_file = wait_for(
            lambda: [
                p
                for p in (workdir / "data").glob("vla_debug_*/model/vla_debug_t0_s0_last_state.pt")
                if p.stat().st_mtime >= started
            ],
            proc,
        )
        os.kill(proc.pid, signal.SIGUSR1)  # the launcher alone: it passes the request on to its ranks
        _, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 75, stderr[-3000:]
    run_dir = state_file.parents[1]
    assert (
        f"stopped: the ranks wrote `last` and stopped on a stop request; resume with train@{run_dir.relative_to(workdir)}"
        in stderr
    )
    status = json.loads((run_dir / "info" / "status.json").read_text())
    stopped = torch_load(state_file)
    assert (
        status["status"] == "interrupted" and f"at step {stopped['step']} of {VLA_STEPS}" in status["error"]
    )
    assert stopped["base"]["base_model"] == base and 0 < stopped["step"] < VLA_STEPS

    lab("run", FOUNDATION, "vla_debug", f"train@{run_dir}", "--nproc-per-node", "2", cwd=workdir)
    assert last_row(run_dir, "vla_debug")["step"] == VLA_STEPS
    rank0 = (run_dir / "log" / "vla_debug_t0_s0_rank0.log").read_text()
    assert f"resumed from step {stopped['step']} on 2 rank(s)" in rank0

    from safetensors import safe_open

    best = run_dir / "model" / "vla_debug_t0_s0_best.safetensors"
    with safe_open(str(best), framework="pt") as f:
        names, metadata = set(f.keys()), f.metadata()
    assert metadata["base_model"] == base
    assert any("lora_A" in n for n in names) and not any(
        n.endswith("q_proj.base_layer.weight") for n in names
    )
    from torch.distributed.checkpoint import FileSystemReader

    shards = torch_load(run_dir / "model" / "vla_debug_t0_s0_last_state.pt")["shards"]
    saved = FileSystemReader(run_dir / "model" / shards).read_metadata().state_dict_metadata
    weights = [key for key in saved if key.startswith("model.")]
    assert any("lora_B" in key for key in weights) and any("latent_head" in key for key in weights)
    assert not any("base_layer" in key or key.endswith("o_proj.weight") for key in weights)  # no base

    lab("run", FOUNDATION, "vla_debug", f"eval@{run_dir}", cwd=workdir)
    evaluated = json.loads((run_dir / "info" / "vla_debug_t0_eval_metrics.json").read_text())["mean"]
    best_state = torch_load(run_dir / "model" / "vla_debug_t0_s0_best_state.pt")
    assert evaluated["val_token_acc"] == pytest.approx(best_state["metrics"]["val_token_acc"], rel=1e-5)

    lab("merge-lora", str(run_dir), cwd=workdir)
    merged = run_dir / "model" / "vla_debug_t0_s0_best_merged.safetensors"
    with safe_open(str(merged), framework="pt") as f:
        plain = set(f.keys())
    assert not any("lora_" in n or "base_layer" in n for n in plain)
    assert any(n.endswith("q_proj.weight") for n in plain)


def wait_for(found, proc: subprocess.Popen, timeout: float = 300) -> Path:
    """The first path ``found()`` returns while ``proc`` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        paths = found()
        if paths:
            return paths[0]
        time.sleep(0.05)
    raise AssertionError(f"nothing appeared in {timeout} s (exit code {proc.poll()})")
