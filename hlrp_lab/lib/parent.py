"""A rank dies with its launcher: torchrun starts each rank in a session of its own, out of reach of a signal to
the launcher's process group, so a launcher killed with SIGKILL (``kill -9 -PGID``, an out-of-memory kill)
would leave its ranks training on and writing into the run directory. Slurm and dstack end a job's every
process; this covers the rest."""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """Linux: SIGKILL this process when the process that started it (the torchrun agent) ends; at once if it
    already has. Elsewhere, nothing."""
    if sys.platform != "linux":
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # not allowed here (a sandbox): the launcher's own handling still applies
    if os.getppid() != parent:  # it ended before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)
