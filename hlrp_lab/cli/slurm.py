"""``hlrp-lab run-remote --slurm``: a run on a Slurm cluster (no torch here).

The sbatch script starts one ``srun`` task per node; each runs the lab's own launcher (``hlrp-lab run ...
--nproc-per-node N --nnodes M --node-rank R --master-addr HEAD``: torchrun in-process, static rendezvous on the
job's first node). The job folder ``data/slurm/{name}/`` (on the cluster's shared filesystem, like ``data/``)
holds the script, Slurm's output and ``run_dir``, where the lab's rank 0 names its run directory: a requeued,
preempted or resubmitted job resumes that run with ``train@RUN_DIR`` from its ``last`` checkpoints.

Stopping before the time limit: Slurm sends SIGUSR1 to every process of the job step (``--signal=USR1@LEAD``,
or ``scancel --signal=USR1 JOBID``); the lab writes ``last`` and exits with ``REQUEUE_EXIT_CODE``; the node's
task records that in ``stopped`` and ends well (so that ``--kill-on-bad-exit`` leaves the other nodes to finish
their save), and the script requeues the job (``--requeue``) or says how to resubmit it.
"""

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from hlrp_lab.lib.errors import REQUEUE_EXIT_CODE, SpecError
from hlrp_lab.lib.layout import slurm_job_dir
from hlrp_lab.lib.runs import DATA_ROOT, RUN_DIR_FILE

JOB_SCRIPT, RUN_DIR, STOPPED = "job.sbatch", "run_dir", "stopped"
OUTPUT = "slurm-%j.out"  # Slurm replaces %j with the job id
# The checkout's environment (`uv sync` there), run directly: no `uv run` in between, which older uv versions
# do not pass SIGUSR1 through.
DEFAULT_LAUNCHER = ".venv/bin/hlrp-lab"
DEFAULT_SIGNAL_LEAD_S = 120
PORT_BASE, PORT_SPAN = 20000, 12000  # the rendezvous port: PORT_BASE + job id % PORT_SPAN, below Linux's
# ephemeral ports (32768-60999), which another process may hold
# What an #SBATCH line holds unquoted: partitions (a comma list) and accounts; paths (no %: Slurm's patterns).
PLAIN = re.compile(r"[A-Za-z0-9_.,+:@=-]+")
PLAIN_PATH = re.compile(r"[A-Za-z0-9_./+:@=-]+")
SLURM_TIME = re.compile(r"(?:(?P<days>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?")


@dataclass(frozen=True)
class SlurmJob:
    """One ``run-remote --slurm`` job: what the lab runs and what it asks of Slurm. ``checkout`` is the
    absolute directory the job runs in; ``spec_file`` is relative to it (or absolute)."""

    spec_file: str
    spec_name: str
    mode: str
    name: str
    checkout: Path
    sets: tuple[str, ...] = ()
    nodes: int = 1
    gpus_per_node: int = 1
    nproc_per_node: int | None = None
    cpus_per_task: int | None = None
    partition: str | None = None
    account: str | None = None
    time: str | None = None
    requeue: bool = False
    signal_lead_s: int = DEFAULT_SIGNAL_LEAD_S
    sbatch_args: tuple[str, ...] = ()
    launcher: str = DEFAULT_LAUNCHER
    upload_hf: bool = False
    launcher_words: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "launcher_words", tuple(launcher_words(self.launcher)))
        self._check_ranks()
        self._check_sbatch_lines()
        check_time(self.time, self.signal_lead_s)

    def _check_ranks(self) -> None:
        if self.gpus_per_node == 0 and self.nproc_per_node is None:
            raise SpecError(
                "--nproc-per-node: a CPU job (--gpus-per-node 0) needs the ranks per node; pass --nproc-per-node N"
            )
        if self.mode == "search" and self.ranks > 1:
            raise SpecError(
                f"--nodes {self.nodes} x {self.ranks_per_node} rank(s): a search runs in one process (Ray Tune "
                "spreads its trials); submit it with --nodes 1 and one rank (--gpus-per-node 1)"
            )
        if self.requeue and self.mode == "search":
            raise SpecError(
                "--requeue: a search does not resume from checkpoints; submit it without --requeue"
            )

    def _check_sbatch_lines(self) -> None:
        """What goes into an #SBATCH line unquoted is one plain word."""
        for flag, value in (("--partition", self.partition), ("--account", self.account)):
            if value is not None and not PLAIN.fullmatch(value):
                raise SpecError(f"{flag} {value!r}: use letters, digits and , . _ - only")
        if not PLAIN_PATH.fullmatch(str(self.job_dir)):
            raise SpecError(
                f"{self.checkout}: Slurm's #SBATCH --output cannot hold this path; submit from a checkout "
                "whose path has no spaces, % or other special characters"
            )
        for arg in self.sbatch_args:
            if not arg.startswith("-") or "\n" in arg or "\r" in arg:
                raise SpecError(
                    f"--sbatch-arg {arg!r}: give one sbatch option per flag, e.g. --sbatch-arg=--qos=high"
                )

    @property
    def ranks_per_node(self) -> int:
        return self.nproc_per_node or self.gpus_per_node

    @property
    def ranks(self) -> int:
        return self.nodes * self.ranks_per_node

    @property
    def cpus(self) -> int:
        """CPUs per node task (all of the node's ranks): at least one per rank unless given."""
        return self.cpus_per_task or self.ranks_per_node

    @property
    def job_dir(self) -> Path:
        return slurm_job_dir(self.checkout / DATA_ROOT, self.name)

    @property
    def script_path(self) -> Path:
        return self.job_dir / JOB_SCRIPT

    @property
    def run_dir_file(self) -> Path:
        return self.job_dir / RUN_DIR

    def output(self, job_id: str = "%j") -> Path:
        """Slurm's output file of the job (``%j``: the pattern)."""
        return self.job_dir / OUTPUT.replace("%j", job_id)


def launcher_words(launcher: str) -> list[str]:
    """The ``--launcher`` command as words (``.venv/bin/hlrp-lab``, ``uv run --frozen hlrp-lab``)."""
    try:
        words = shlex.split(launcher)
    except ValueError as err:
        raise SpecError(f"--launcher {launcher!r}: {err}; quote it as a shell would") from None
    if not words:
        raise SpecError("--launcher: empty; give the command that runs hlrp-lab, e.g. .venv/bin/hlrp-lab")
    return words


def time_seconds(text: str) -> int:
    """Seconds of a Slurm time limit: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS."""
    match = SLURM_TIME.fullmatch(text)
    if match is None:
        raise SpecError(f"--time {text!r}: use HH:MM:SS, MM, or D-HH:MM:SS as sbatch does")
    a, b, c = (int(match[k]) if match[k] else None for k in ("a", "b", "c"))
    if match["days"] is not None:
        return int(match["days"]) * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if c is not None:
        return a * 3600 + b * 60 + c
    return a * 60 + (b or 0)


def check_time(time: str | None, lead_s: int) -> None:
    """The time limit parses, and leaves the signal's lead time before it."""
    if time is None:
        return
    limit = time_seconds(time)
    if limit <= lead_s:
        raise SpecError(
            f"--time {time}: the job would get SIGUSR1 ({lead_s} s before the limit) at its start; give a longer "
            "--time or a smaller --signal-lead"
        )


def directives(job: SlurmJob) -> list[str]:
    """The ``#SBATCH`` options of the job."""
    options = [f"--job-name={job.name}", f"--nodes={job.nodes}", "--ntasks-per-node=1"]
    options += [f"--gpus-per-node={job.gpus_per_node}"] * (job.gpus_per_node > 0)
    options += [f"--cpus-per-task={job.cpus}"]
    options += [f"--time={job.time}"] * (job.time is not None)
    options += [f"--partition={job.partition}"] * (job.partition is not None)
    options += [f"--account={job.account}"] * (job.account is not None)
    options += [f"--output={job.output()}", "--open-mode=append"]  # a requeued job appends to the same file
    if job.mode != "search":  # a search does not resume: it runs to the limit
        options += [f"--signal=USR1@{job.signal_lead_s}"]  # no B: every process of the job step gets it
    options += ["--requeue" if job.requeue else "--no-requeue", *job.sbatch_args]
    return [f"#SBATCH {option}" for option in options]


def bash_array(name: str, words: list[str] | tuple[str, ...]) -> str:
    return f"{name}=({shlex.join(words)})"


def settings(job: SlurmJob) -> list[str]:
    """The values run-remote fixed at submission, as shell assignments."""
    sets = [arg for value in job.sets for arg in ("-s", value)]
    return [
        f"CHECKOUT={shlex.quote(str(job.checkout))}",
        f"JOB_DIR={shlex.quote(str(job.job_dir))}",
        f"SPEC_FILE={shlex.quote(job.spec_file)}",
        f"SPEC_NAME={shlex.quote(job.spec_name)}",
        f"MODE={shlex.quote(job.mode)}",
        bash_array("LAB", job.launcher_words),
        bash_array("SETS", sets) + "  # -s values; a resumed run keeps its saved spec instead",
        bash_array("OPTIONS", ["--upload-hf"] * job.upload_hf),
        f"NPROC_PER_NODE={job.ranks_per_node}",
        f"REQUEUE={int(job.requeue)}",
        f"RESUMABLE={int(job.mode != 'search')}",
    ]


# Each node's task: the lab's launcher for this node; its exit code 75 (SIGUSR1: `last` written) is recorded in
# $JOB_DIR/stopped and the task ends well, so that srun's --kill-on-bad-exit does not cut short the other nodes'
# save. The trap keeps this shell alive through SIGUSR1, which Slurm sends to every process of the step.
NODE_TASK = (
    'trap : USR1; "$@" --nnodes "$SLURM_NNODES" --node-rank "$SLURM_NODEID"; rc=$?; '
    f'if [ "$rc" -eq {REQUEUE_EXIT_CODE} ]; then touch "$JOB_DIR/{STOPPED}"; exit 0; fi; exit "$rc"'
)

BODY = f"""\
cd "$CHECKOUT"
export JOB_DIR
export {RUN_DIR_FILE}="$JOB_DIR/{RUN_DIR}"  # the lab's rank 0 names its run directory there
rm -f "$JOB_DIR/{STOPPED}"
trap 'echo "hlrp-lab: the batch shell got SIGUSR1; the ranks save last and stop"' USR1
if [ "$RESUMABLE" = 1 ] && [ -s "${RUN_DIR_FILE}" ]; then
  MODE="train@$(cat "${RUN_DIR_FILE}")"  # requeued, preempted or resubmitted: resume from last
  SETS=()
fi
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | awk 'NR == 1')
PORT=$(({PORT_BASE} + SLURM_JOB_ID % {PORT_SPAN}))
echo "hlrp-lab: job $SLURM_JOB_ID (restart ${{SLURM_RESTART_COUNT:-0}}): $SPEC_NAME $MODE on $SLURM_JOB_NUM_NODES node(s) x $NPROC_PER_NODE rank(s), rendezvous $HEAD:$PORT"
rc=0
srun --ntasks-per-node=1 --kill-on-bad-exit=1 --cpus-per-task="$SLURM_CPUS_PER_TASK" \\
  bash -c {shlex.quote(NODE_TASK)} hlrp-lab-node \\
  "${{LAB[@]}}" run "$SPEC_FILE" "$SPEC_NAME" "$MODE" ${{SETS[@]+"${{SETS[@]}}"}} ${{OPTIONS[@]+"${{OPTIONS[@]}}"}} \\
  --nproc-per-node "$NPROC_PER_NODE" --master-addr "$HEAD" --master-port "$PORT" || rc=$?
if [ "$rc" -eq 0 ] && [ -e "$JOB_DIR/{STOPPED}" ]; then
  if [ "$REQUEUE" = 1 ]; then
    echo "hlrp-lab: the run saved last after SIGUSR1; requeueing job $SLURM_JOB_ID to resume it"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  echo "hlrp-lab: the run saved last after SIGUSR1; resume it with: sbatch $JOB_DIR/{JOB_SCRIPT}"
  exit {REQUEUE_EXIT_CODE}
fi
exit "$rc"
"""


def sbatch_script(job: SlurmJob) -> str:
    """The job's sbatch script: directives, the values fixed at submission, then the generic body."""
    what = f"{job.spec_name} {job.mode}, {job.nodes} node(s) x {job.ranks_per_node} rank(s)"
    head = [
        "#!/bin/bash",
        f"# hlrp-lab run-remote --slurm: {what} (docs/DISTRIBUTED.md); `sbatch` this file again to resume",
        *directives(job),
        "set -euo pipefail",
        *settings(job),
    ]
    return "\n".join(head) + "\n" + BODY


def sbatch_command(job: SlurmJob, sbatch: str = "sbatch") -> list[str]:
    return [sbatch, "--parsable", str(job.script_path)]


def write_job(job: SlurmJob) -> None:
    """Make the job folder (a new one: a name is one job) and write its script."""
    if job.job_dir.exists():
        raise SpecError(
            f"-n {job.name}: {job.job_dir} exists; choose another name, or resume that job with "
            f"`sbatch {job.script_path}`"
        )
    job.job_dir.mkdir(parents=True)
    job.script_path.write_text(sbatch_script(job))
    job.script_path.chmod(0o600)  # its -s values may hold a secret; only the owner submits and runs it


def parse_job_id(stdout: str) -> str:
    """The job id in ``sbatch --parsable``'s output (``ID`` or ``ID;CLUSTER``)."""
    return stdout.strip().splitlines()[-1].split(";")[0] if stdout.strip() else ""
