"""How many CPUs this process may really use: its affinity mask and its cgroup's CPU quota, not the machine's."""

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cpus() -> int:
    """CPUs this process can run on (``sched_getaffinity``), capped by a cgroup v2 ``cpu.max`` quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_quota(CGROUP_CPU_MAX)
    return max(1, min(cpus, quota)) if quota is not None else max(1, cpus)


def cgroup_quota(path: Path) -> int | None:
    """The CPU count a cgroup v2 ``cpu.max`` file allows ("200000 100000" -> 2), or None without a quota."""
    try:
        limit, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if limit == "max":
        return None
    return max(1, math.ceil(int(limit) / int(period)))


def short_openmp_spin() -> None:
    """Let OpenMP threads spin only briefly before they sleep while they wait for work (GNU OpenMP, which
    PyPI's torch uses: ``GOMP_SPINCOUNT=10000`` instead of 300000), unless the user set a wait policy.

    On a busy machine long spinning multiplies the CPU time of a training step, and threads that never sleep
    (``OMP_WAIT_POLICY=PASSIVE``) cost an idle machine a fifth of its speed; benchmarks/busy_machine.py
    measures both. It must run before torch loads OpenMP; spawned sessions, DataLoader and Ray workers
    inherit it.
    """
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "10000")
