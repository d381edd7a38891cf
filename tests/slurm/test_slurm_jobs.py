"""`run-remote --slurm` against a real Slurm (the session's local cluster, conftest.py): a 2-rank CPU job of
`laq_debug` finishes and leaves its run directory; a `--requeue` job stopped by SIGUSR1 (what Slurm sends
`--signal-lead` seconds before the time limit) saves `last`, is requeued, and resumes from it to the end."""

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from hlrp_lab.lib.layout import RunLayout, slurm_job_dir
from tests.slurm.conftest import SlurmCluster

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
LAUNCHER = str(Path(sys.executable).parent / "hlrp-lab")  # this venv's: the job needs no `uv sync`
# A small laq_debug: one session, 64 held-out pairs, a checkpoint (`last`) every 4 steps.
SMALL = ["-s", "meta.max_session=1", "-s", "data.val_pairs=64", "-s", "train.log_frequency=2"]
JOB_TIMEOUT_S = 240
END_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A checkout for the module's jobs (its data/ holds the shards, generated once, the runs and the job
    folders)."""
    folder = tmp_path_factory.mktemp("slurm_checkout")
    (folder / "specs").mkdir()
    shutil.copy(ROOT / "specs" / "laq.json", folder / "specs" / "laq.json")
    return folder


def submit(cluster: SlurmCluster, checkout: Path, name: str, *args: str) -> str:
    """``hlrp-lab run-remote --slurm`` in ``checkout``; the job id it printed."""
    command = [LAUNCHER, "run-remote", "--slurm", "specs/laq.json", "laq_debug", *args, "-n", name]
    command += ["--gpus-per-node", "0", "--nproc-per-node", "2", "--launcher", LAUNCHER]
    env = {**cluster.env, "TQDM_DISABLE": "1"}
    out = subprocess.run(
        command, cwd=checkout, env=env, capture_output=True, text=True, check=False, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    match = re.search(r"submitted job (\d+)", out.stdout)
    assert match, out.stdout
    return match[1]


def wait_for(what: str, condition, cluster: SlurmCluster, job_dir: Path, timeout: float = JOB_TIMEOUT_S):
    """Poll ``condition()`` until it returns something true; the job's output in the failure message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.5)
    outputs = "".join(path.read_text()[-3000:] for path in sorted(job_dir.glob("slurm-*.out")))
    pytest.fail(f"{what} within {timeout} s; the job's output:\n{outputs}\n{cluster.job(job_dir.name)}")


def wait_end(cluster: SlurmCluster, job_id: str, job_dir: Path) -> dict[str, str]:
    """The job's fields once it ended (sacct needs accounting: ask the controller, which keeps it MinJobAge)."""
    return wait_for(
        f"job {job_id} did not end",
        lambda: (job := cluster.job(job_id)).get("JobState") in END_STATES and job,
        cluster,
        job_dir,
    )


def run_dir_of(checkout: Path, job_dir: Path) -> Path | None:
    text = (job_dir / "run_dir").read_text().strip() if (job_dir / "run_dir").is_file() else ""
    return (checkout / text) if text else None


def test_a_two_rank_cpu_job_finishes_and_leaves_its_run_dir(slurm_cluster, checkout):
    name = "laq-two-ranks"
    job_id = submit(slurm_cluster, checkout, name, "dev", *SMALL, "-s", "train.max_step=4")
    job_dir = slurm_job_dir(checkout / "data", name)
    job = wait_end(slurm_cluster, job_id, job_dir)
    output = (job_dir / f"slurm-{job_id}.out").read_text()
    assert job["JobState"] == "COMPLETED", output[-3000:]
    run_dir = run_dir_of(checkout, job_dir)
    assert run_dir is not None and run_dir.is_dir(), output[-3000:]
    layout = RunLayout(run_dir, "laq_debug")
    assert json.loads(layout.status.read_text())["status"] == "completed"
    assert layout.log_file(0, 0, rank=0).is_file() and layout.log_file(0, 0, rank=1).is_file()
    assert f"hlrp-lab: job {job_id} (restart 0): laq_debug dev on 1 node(s) x 2 rank(s)" in output


def test_a_requeue_job_stopped_by_sigusr1_resumes_from_last_and_completes(slurm_cluster, checkout):
    name = "laq-requeue"
    args = ["train", *SMALL, "-s", "train.max_step=12", "-s", "train.eval_frequency=4", "--requeue"]
    job_id = submit(slurm_cluster, checkout, name, *args)
    job_dir = slurm_job_dir(checkout / "data", name)
    run_dir = wait_for(
        "no run directory named", lambda: run_dir_of(checkout, job_dir), slurm_cluster, job_dir
    )
    layout = RunLayout(run_dir, "laq_debug")
    last = layout.checkpoint_state(0, 0, "last")
    wait_for("no last checkpoint", last.is_file, slurm_cluster, job_dir)
    # What --signal=USR1@LEAD does before the time limit: SIGUSR1 to every process of the job step.
    slurm_cluster.run("scancel", "--signal=USR1", job_id)
    requeued = wait_for(
        "the job was not requeued",
        lambda: (
            (job := slurm_cluster.job(job_id)).get("JobState") == "PENDING" and job["Restarts"] != "0" and job
        ),
        slurm_cluster,
        job_dir,
    )
    assert requeued["Requeue"] == "1"  # it starts again once its credentials expired (cred_expire)
    job = wait_end(slurm_cluster, job_id, job_dir)
    output = (job_dir / f"slurm-{job_id}.out").read_text()
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1", output[-3000:]
    assert (
        "requeueing job" in output
        and f"(restart 1): laq_debug train@{run_dir.relative_to(checkout)}" in output
    )
    assert "resumed from step" in layout.log_file(0, 0, rank=0).read_text()
    assert json.loads(layout.status.read_text())["status"] == "completed"
    assert pd.read_csv(layout.session_metrics(0, 0))["step"].iloc[-1] == 12
