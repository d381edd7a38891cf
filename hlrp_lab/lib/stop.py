"""A stop request: SIGUSR1 asks a run to write its `last` checkpoint at the end of the current step and exit
with ``REQUEUE_EXIT_CODE``, so that a scheduler can start it again from there. Slurm sends it before a job's
time limit (``#SBATCH --signal=USR1@120``); ``kill -USR1 PID`` does the same by hand."""

import os
import re
import signal
import threading
from pathlib import Path

STOP_SIGNAL = signal.SIGUSR1
# Child processes that do not run the lab and die of the signal: multiprocessing's resource tracker.
HELPERS = re.compile(r"multiprocessing\.(resource_tracker|forkserver)")
_requested = threading.Event()


def listen(forward: bool = False, fresh: bool = False) -> None:
    """Record a stop request in this process (and pass it on to its child processes with ``forward``: the
    ranks of a launcher); ``fresh`` forgets an earlier one (a new run in this process). Only the main thread
    can set signal handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return
    if fresh:
        _requested.clear()
    signal.signal(STOP_SIGNAL, _forwarding if forward else _record)


def requested() -> bool:
    return _requested.is_set()


def _record(signum: int, frame: object) -> None:
    _requested.set()


def _forwarding(signum: int, frame: object) -> None:
    _requested.set()
    for pid in child_pids():
        if HELPERS.search(command_line(pid)):
            continue
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def child_pids(parent: int | None = None) -> list[int]:
    """The direct children of ``parent`` (this process) from /proc; none where there is no /proc."""
    parent = os.getpid() if parent is None else parent
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # the fields after the command name, which may hold spaces
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the process has ended
        if int(fields[1]) == parent:
            children.append(int(stat.parent.name))
    return children


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
