"""The sbatch script of `run-remote --slurm` without a cluster: its #SBATCH lines, its syntax (`bash -n`), its
body run by bash with `srun`, `scontrol` and the lab stubbed (arguments intact, resume through run_dir, the
requeue on exit code 75), the errors before anything is written, and `run-remote --slurm` with a recording
`sbatch` stub (the real one: test_slurm_jobs.py)."""

import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hlrp_lab.cli.main import app
from hlrp_lab.cli.slurm import SlurmJob, directives, sbatch_script, time_seconds
from hlrp_lab.lib.errors import REQUEUE_EXIT_CODE, SpecError
from hlrp_lab.lib.layout import slurm_job_dir

ROOT = Path(__file__).parents[2]
VALUES = ("train.max_step=10", "data.cache_dir=/scratch/two words/'q'", 'x="y z"', "shards=a-{000..003}.tar")
JOB_ID = 12345
runner = CliRunner()


def stub(path: Path, code: str) -> None:
    path.write_text(f"#!{sys.executable}\n{code}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def job(tmp_path) -> SlurmJob:
    return SlurmJob(
        spec_file="specs/laq.json",
        spec_name="laq_debug",
        mode="dev",
        name="my-job",
        checkout=tmp_path,
        sets=VALUES,
        nodes=2,
        gpus_per_node=4,
    )


# --- the script's text ---------------------------------------------------------------------------------------


def test_directives(job):
    lines = directives(job)
    assert lines[:5] == [
        "#SBATCH --job-name=my-job",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --cpus-per-task=4",
    ]
    assert f"#SBATCH --output={job.job_dir}/slurm-%j.out" in lines and "#SBATCH --open-mode=append" in lines
    assert "#SBATCH --signal=USR1@120" in lines  # not B:USR1: every process of the job step gets it
    assert "#SBATCH --no-requeue" in lines and not any(
        "partition" in line or "--time" in line for line in lines
    )
    cpu = replace(job, gpus_per_node=0, nproc_per_node=2, requeue=True, time="01:00:00", partition="short")
    more = replace(cpu, account="lab", cpus_per_task=8, signal_lead_s=300, sbatch_args=("--qos=high",))
    lines = directives(more)
    assert not any("gpus" in line for line in lines)
    for line in ("--cpus-per-task=8", "--time=01:00:00", "--partition=short", "--account=lab", "--requeue"):
        assert f"#SBATCH {line}" in lines
    assert lines[-1] == "#SBATCH --qos=high" and "#SBATCH --signal=USR1@300" in lines


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"requeue": True},
        {"mode": "search", "nodes": 1, "gpus_per_node": 1},
        {"upload_hf": True, "sets": ()},
    ],
)
def test_the_script_is_valid_bash(job, tmp_path, change):
    script = tmp_path / "job.sbatch"
    script.write_text(sbatch_script(replace(job, **change)))
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 1800),
        ("10:30", 630),
        ("01:00:00", 3600),
        ("2-00", 172800),
        ("1-02:03", 93780),
        ("1-00:00:05", 86405),
    ],
)
def test_time_limits_parse_as_sbatch_reads_them(text, seconds):
    assert time_seconds(text) == seconds


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gpus_per_node": 0}, "--nproc-per-node: a CPU job (--gpus-per-node 0) needs the ranks per node"),
        ({"time": "1h"}, "--time '1h': use HH:MM:SS"),
        (
            {"time": "00:02:00"},
            "--time 00:02:00: the job would get SIGUSR1 (120 s before the limit) at its start",
        ),
        ({"partition": "a b"}, "--partition 'a b': use letters, digits"),
        ({"account": "x\n#SBATCH --x"}, "--account 'x\\n#SBATCH --x': use letters"),
        ({"sbatch_args": ("qos=high",)}, "--sbatch-arg 'qos=high': give one sbatch option per flag"),
        ({"launcher": "uv 'run"}, '--launcher "uv \'run": No closing quotation'),
        ({"launcher": " "}, "--launcher: empty"),
        (
            {"mode": "search", "nodes": 1, "gpus_per_node": 1, "requeue": True},
            "--requeue: a search does not resume",
        ),
        ({"name": "../x"}, "-n '../x': use letters, digits"),
    ],
)
def test_bad_options_are_one_line_errors(job, change, message):
    with pytest.raises(SpecError) as err:
        replace(job, **change)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_job_folder_is_under_data_slurm():
    assert slurm_job_dir(Path("/x/data"), "vla-2x8") == Path("/x/data/slurm/vla-2x8")
    with pytest.raises(SpecError, match="-n '.hidden': use letters"):
        slurm_job_dir(Path("data"), ".hidden")


def test_a_checkout_path_that_sbatch_cannot_hold_is_refused(job, tmp_path):
    with pytest.raises(SpecError, match="#SBATCH --output cannot hold this path"):
        replace(job, checkout=tmp_path / "two words")


# --- the script, run by bash with Slurm and the lab stubbed --------------------------------------------------


@pytest.fixture
def stubs(tmp_path) -> Path:
    """``srun`` (runs the task once as node 0 of 2), ``scontrol`` (host names; records requeue) and a lab
    launcher (records its arguments and HLRP_RUN_DIR_FILE, exits with LAB_EXIT); their folder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "calls.jsonl"
    save = f"open({str(record)!r}, 'a').write(json.dumps(call) + '\\n')"
    stub(
        bin_dir / "srun",
        "import json, os, sys\n"
        "args = sys.argv[1:]; i = next(i for i, a in enumerate(args) if not a.startswith('-'))\n"
        f"call = {{'tool': 'srun', 'options': args[:i]}}; {save}\n"
        "os.environ.update(SLURM_NODEID='0', SLURM_NNODES='2'); os.execvp(args[i], args[i:])",
    )
    stub(
        bin_dir / "scontrol",
        "import json, sys\n"
        "if sys.argv[1:3] == ['show', 'hostnames']: print('node-a'); print('node-b'); sys.exit()\n"
        f"call = {{'tool': 'scontrol', 'args': sys.argv[1:]}}; {save}",
    )
    stub(
        bin_dir / "lab",
        "import json, os, sys\n"
        f"call = {{'tool': 'lab', 'args': sys.argv[1:], 'run_dir_file': os.environ.get('HLRP_RUN_DIR_FILE')}}\n"
        f"{save}; sys.exit(int(os.environ.get('LAB_EXIT', '0')))",
    )
    return bin_dir


def run_script(job: SlurmJob, stubs: Path, lab_exit: int = 0) -> tuple[int, list[dict], str]:
    """Run the job's script as Slurm would on node 0; its exit code, the stubs' calls and its output."""
    job = replace(job, launcher=str(stubs / "lab"))
    job.job_dir.mkdir(parents=True, exist_ok=True)
    job.script_path.write_text(sbatch_script(job))
    env = {
        "PATH": f"{stubs}:{os.environ['PATH']}",
        "SLURM_JOB_ID": str(JOB_ID),
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_CPUS_PER_TASK": "4",
        "LAB_EXIT": str(lab_exit),
    }
    out = subprocess.run(["bash", str(job.script_path)], env=env, capture_output=True, text=True, check=False)
    record = stubs.parent / "calls.jsonl"
    calls = [json.loads(line) for line in record.read_text().splitlines()] if record.is_file() else []
    record.unlink(missing_ok=True)
    return out.returncode, calls, out.stdout + out.stderr


def test_each_node_runs_the_lab_launcher_with_the_values_intact(job, stubs):
    code, calls, output = run_script(job, stubs)
    assert code == 0, output
    srun, lab = calls
    assert srun["options"] == ["--ntasks-per-node=1", "--kill-on-bad-exit=1", "--cpus-per-task=4"]
    sets = [arg for value in VALUES for arg in ("-s", value)]
    assert lab["args"] == [
        "run",
        "specs/laq.json",
        "laq_debug",
        "dev",
        *sets,
        "--nproc-per-node",
        "4",
        "--master-addr",
        "node-a",
        "--master-port",
        str(20000 + JOB_ID % 12000),
        "--nnodes",
        "2",
        "--node-rank",
        "0",
    ]
    assert lab["run_dir_file"] == str(job.run_dir_file)
    assert (
        "hlrp-lab: job 12345 (restart 0): laq_debug dev on 2 node(s) x 4 rank(s), rendezvous node-a:20345"
        in (output)
    )


def test_a_job_with_a_run_dir_resumes_it_with_its_saved_spec(job, stubs):
    job.job_dir.mkdir(parents=True)
    job.run_dir_file.write_text("data/laq_debug_2026_11_30_101010")
    code, calls, output = run_script(replace(job, upload_hf=True), stubs)
    assert code == 0, output
    assert calls[1]["args"][:5] == [
        "run",
        "specs/laq.json",
        "laq_debug",
        "train@data/laq_debug_2026_11_30_101010",
        "--upload-hf",
    ]
    assert "-s" not in calls[1]["args"]  # a resumed run keeps its saved spec (and refuses plain -s values)


def test_a_search_never_resumes_nor_gets_the_stop_signal(job, stubs):
    search = replace(job, mode="search", nodes=1, gpus_per_node=1, sets=())
    assert not any(line.startswith("#SBATCH --signal") for line in sbatch_script(search).splitlines())
    search.job_dir.mkdir(parents=True)
    search.run_dir_file.write_text("data/laq_search_2026_11_30_101010")
    code, calls, output = run_script(search, stubs)
    assert code == 0 and calls[1]["args"][3] == "search", output


def test_exit_75_requeues_a_requeue_job(job, stubs):
    code, calls, output = run_script(replace(job, requeue=True), stubs, lab_exit=REQUEUE_EXIT_CODE)
    assert code == 0, output
    assert calls[-1] == {"tool": "scontrol", "args": ["requeue", str(JOB_ID)]}
    assert "requeueing job 12345 to resume it" in output
    code, calls, output = run_script(replace(job, requeue=True), stubs)  # the next start clears the mark
    assert code == 0 and [call["tool"] for call in calls] == ["srun", "lab"], output


def test_exit_75_without_requeue_says_how_to_resume(job, stubs):
    code, calls, output = run_script(job, stubs, lab_exit=REQUEUE_EXIT_CODE)
    assert code == REQUEUE_EXIT_CODE
    assert "scontrol" not in [call["tool"] for call in calls]
    assert f"resume it with: sbatch {job.script_path}" in output


def test_a_failed_run_fails_the_job(job, stubs):
    code, calls, output = run_script(replace(job, requeue=True), stubs, lab_exit=3)
    assert code == 3 and "scontrol" not in [call["tool"] for call in calls], output


# --- run-remote --slurm with a recording sbatch ----------------------------------------------------------------


@pytest.fixture
def checkout(tmp_path, monkeypatch) -> Path:
    """A checkout to submit from (its specs/), as the working directory."""
    folder = tmp_path / "checkout"
    (folder / "specs").mkdir(parents=True)
    shutil.copy(ROOT / "specs" / "laq.json", folder / "specs" / "laq.json")
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture
def sbatch_stub(tmp_path, monkeypatch) -> Path:
    """An ``sbatch`` on PATH that records its arguments and the script it was given, and prints a job id (or
    fails when SBATCH_FAIL is set); the record's path."""
    record = tmp_path / "sbatch_call.json"
    bin_dir = tmp_path / "sbatch_bin"
    bin_dir.mkdir()
    stub(
        bin_dir / "sbatch",
        "import json, os, sys\n"
        "if os.environ.get('SBATCH_FAIL'): sys.exit(\"sbatch: error: invalid partition specified: nope\")\n"
        f"json.dump({{'argv': sys.argv[1:], 'script': open(sys.argv[-1]).read()}}, open({str(record)!r}, 'w'))\n"
        "print('4242')",
    )
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return record


SUBMIT = [
    "run-remote",
    "--slurm",
    "specs/laq.json",
    "laq_debug",
    "dev",
    "-n",
    "job-1",
    "--gpus-per-node",
    "0",
]
SUBMIT += ["--nproc-per-node", "2", "-s", "train.max_step=10"]


def test_dry_run_prints_the_script_and_writes_nothing(checkout, sbatch_stub):
    result = runner.invoke(app, [*SUBMIT, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("#!/bin/bash\n") and "#SBATCH --job-name=job-1" in result.output
    job_file = checkout / "data" / "slurm" / "job-1" / "job.sbatch"
    assert result.output.rstrip().endswith(f"# would run: sbatch --parsable {job_file}")
    assert not (checkout / "data").exists() and not sbatch_stub.exists()


def test_submit_writes_the_job_folder_and_runs_sbatch(checkout, sbatch_stub):
    result = runner.invoke(app, SUBMIT)
    assert result.exit_code == 0, result.output
    job_file = checkout / "data" / "slurm" / "job-1" / "job.sbatch"
    call = json.loads(sbatch_stub.read_text())
    assert call == {"argv": ["--parsable", str(job_file)], "script": job_file.read_text()}
    assert "SETS=(-s train.max_step=10)" in call["script"] and f"CHECKOUT={checkout}" in call["script"]
    follow = (
        "follow it with `squeue -j 4242` and `tail -f data/slurm/job-1/slurm-4242.out`; the run directory will be "
        "named in data/slurm/job-1/run_dir"
    )
    assert result.output.splitlines() == ["submitted job 4242: data/slurm/job-1/job.sbatch", follow]
    result = runner.invoke(app, SUBMIT)  # a name is one job
    assert result.exit_code == 2
    assert (
        f"-n job-1: {job_file.parent} exists; choose another name, or resume that job with `sbatch"
        in result.output
    )


def test_a_refused_submission_leaves_no_job_folder(checkout, sbatch_stub, monkeypatch):
    monkeypatch.setenv("SBATCH_FAIL", "1")
    result = runner.invoke(app, SUBMIT)
    assert result.exit_code == 1
    assert (
        "error: sbatch exited with code 1: sbatch: error: invalid partition specified: nope" in result.output
    )
    assert not (checkout / "data" / "slurm" / "job-1").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpu"], "--gpu: a dstack option; with --slurm give --gpus-per-node N"),
        (["--nodes", "2", "-s", "data.batch_size=30"], "data.batch_size: 30 does not split over 4 rank(s)"),
        (["-n", "a/b"], "-n 'a/b': use letters, digits"),
    ],
)
def test_bad_submissions_fail_before_anything_is_written(checkout, sbatch_stub, args, message):
    result = runner.invoke(app, [*SUBMIT, *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (checkout / "data").exists() and not sbatch_stub.exists()


def test_search_on_several_ranks_is_refused(checkout, sbatch_stub):
    args = ["run-remote", "--slurm", "specs/laq.json", "laq_search", "search", "--gpus-per-node", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert (
        "--nodes 1 x 2 rank(s): a search runs in one process (Ray Tune spreads its trials)" in result.output
    )


def test_missing_sbatch_is_one_line(checkout, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = runner.invoke(app, SUBMIT)
    assert result.exit_code == 2
    assert "error: sbatch not found: --slurm submits from a machine with Slurm's commands" in result.output


def test_slurm_submission_imports_neither_torch_nor_ray(checkout):
    code = (
        "import sys; from typer.testing import CliRunner; from hlrp_lab.cli.main import app; "
        f"result = CliRunner().invoke(app, {[*SUBMIT, '--dry-run']!r}); assert result.exit_code == 0, result.output; "
        "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=checkout
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_dry_run_masks_secret_values(checkout):
    spec = json.loads((checkout / "specs" / "laq.json").read_text())["laq_debug"]
    spec["data"]["cache_dir"] = "${hf_token}"  # any variable named like a secret
    (checkout / "specs" / "secret.json").write_text(json.dumps({"laq_debug": spec}))
    args = ["run-remote", "--slurm", "specs/secret.json", "laq_debug", "-s", "hf_token=hf_Secret123456789"]
    result = runner.invoke(app, [*args, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "SETS=(-s 'hf_token=***')" in result.output and "hf_Secret" not in result.output
