"""``hlrp-lab run ... --nproc-per-node N``: the same command on N ranks per node, started by torchrun itself.

The launcher runs torchrun's own launcher in this process (no restarts: a failed rank ends the job); each rank
runs ``python -m hlrp_lab run ...`` with torchrun's environment and joins the process group from it
(``distributed.process_group``), as it would when a user starts ``torchrun ... -m hlrp_lab run ...`` by hand.
"""

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

from hlrp_lab.lib import stop
from hlrp_lab.lib.cpus import available_cpus
from hlrp_lab.lib.errors import REQUEUE_EXIT_CODE, Interrupted, RunError, SpecError
from hlrp_lab.lib.layout import RunLayout
from hlrp_lab.lib.runs import FAILED, INTERRUPTED, RUN_DIR_FILE, RUNNING, read_status, write_status

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class Launch:
    """Where the ranks run: ``nproc_per_node`` on each of ``nnodes`` nodes; this node is ``node_rank``, and
    node 0 (``master_addr``:``master_port``) hosts the rendezvous. One node needs no address."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None

    def __post_init__(self) -> None:
        if self.nnodes > 1 and self.master_addr is None:
            raise SpecError(
                f"--nnodes {self.nnodes} needs --master-addr: the address of node 0, which every node can reach"
            )
        if self.node_rank >= self.nnodes:
            raise SpecError(f"--node-rank {self.node_rank}: the nodes are numbered 0 to {self.nnodes - 1}")
        if "WORLD_SIZE" in os.environ:
            raise SpecError(
                "--nproc-per-node: this process is already a rank of a torchrun job (WORLD_SIZE is set); run "
                "`hlrp-lab run` without the launch options inside it"
            )

    @property
    def ranks(self) -> int:
        return self.nproc_per_node * self.nnodes

    def torchrun_args(self) -> list[str]:
        args = [
            "--nproc-per-node",
            str(self.nproc_per_node),
            "--nnodes",
            str(self.nnodes),
            "--max-restarts",
            "0",
        ]
        if self.nnodes == 1 and self.master_addr is None:
            return [*args, "--standalone"]  # a free local port for the rendezvous
        port = self.master_port or DEFAULT_PORT
        return [
            *args,
            "--node-rank",
            str(self.node_rank),
            "--master-addr",
            str(self.master_addr),
            "--master-port",
            str(port),
        ]


def launch(plan: Launch, spec_name: str, lab_args: list[str]) -> None:
    """Run ``hlrp-lab <lab_args>`` on every rank of this node; a RunError naming the first rank that failed,
    also written as the status of the run, which rank 0 names in a file (a rank killed or stopped by torchrun
    cannot record it itself)."""
    threads = max(1, available_cpus() // plan.nproc_per_node)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # torch threads per rank (the lab sets them too)
    stop.listen(forward=True)  # a stop request reaches every rank of this node
    given = os.environ.get(RUN_DIR_FILE)  # a job script's (Slurm), which outlives this launch
    with tempfile.TemporaryDirectory() as folder:
        run_dir_file = Path(given or Path(folder) / "run_dir")
        os.environ[RUN_DIR_FILE] = str(run_dir_file)
        try:
            run(parse_args([*plan.torchrun_args(), "-m", "hlrp_lab", *lab_args]))
        except ChildFailedError as err:
            if err.get_first_failure()[1].exitcode == REQUEUE_EXIT_CODE:
                raise stopped(run_dir_file, spec_name) from None
            line = failure_line(err, plan)
            if run_dir_file.is_file():
                record_failure(RunLayout(Path(run_dir_file.read_text()), spec_name), err, line)
            raise RunError(line) from None
        finally:
            if given is None:
                del os.environ[RUN_DIR_FILE]


def stopped(run_dir_file: Path, spec_name: str) -> Interrupted:
    """The ranks stopped on a stop request; the run is marked interrupted, unless rank 0 did that already
    (torchrun may have stopped it before it could)."""
    run_dir = run_dir_file.read_text() if run_dir_file.is_file() else None
    error = Interrupted(
        f"the ranks wrote `last` and stopped on a stop request; resume with train@{run_dir or 'RUN_DIR'}"
    )
    if run_dir is not None:
        layout = RunLayout(Path(run_dir), spec_name)
        if (read_status(layout) or {}).get("status") == RUNNING:
            write_status(layout, INTERRUPTED, str(error))
    return error


def record_failure(layout: RunLayout, err: ChildFailedError, line: str) -> None:
    """The run's status says which rank failed first, unless rank 0 did and recorded its own error."""
    rank, _ = err.get_first_failure()
    if rank != 0 or (read_status(layout) or {}).get("status") == RUNNING:
        write_status(layout, FAILED, line)


def failure_line(err: ChildFailedError, plan: Launch) -> str:
    """Which rank failed first and how, and what happened to the job."""
    rank, failure = err.get_first_failure()
    if failure.exitcode < 0:
        how = f"was killed by {failure.signal_name()}"
    else:
        how = f"exited with code {failure.exitcode}"
        detail = (failure.message or "").strip().splitlines()
        if detail and "To enable traceback" not in detail[0]:
            how += f" ({detail[0]})"
    others = len(err.failures) - 1
    return (
        f"rank {rank} of {plan.ranks} (pid {failure.pid}) {how}; torchrun stopped the other ranks"
        + (f" ({others} more failed)" if others else "")
        + f"; the rank's own error, if it could print one, is above (and in RUN_DIR/log/*_rank{rank}.log once "
        "the run had started: resume it with train@RUN_DIR)"
    )
