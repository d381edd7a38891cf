"""A real single-node Slurm cluster on this machine for the session: munged, slurmctld and slurmd, started from
a munge key and a slurm.conf in a temporary folder (ports of their own, no systemd, as root), stopped by their
pid files afterwards. Client commands reach it through ``SLURM_CONF`` in ``SlurmCluster.env``.

Skipped, with the reason, where Slurm is not installed (Debian: ``apt-get install slurm-wlm munge``), where
the tests do not run as root, or where the daemons do not start. ``HLRP_KEEP_SLURM=1`` keeps the folder (the
daemons' logs) after the session.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")
START_TIMEOUT_S = 30
DAEMONS = ("slurmd", "slurmctld", "munged")  # stopped in this order
# A requeued job may start again once its old credentials expired: 120 s by default, 10 s here.
CRED_EXPIRE_S = 10


@dataclass(frozen=True)
class SlurmCluster:
    folder: Path
    env: dict[str, str]  # os.environ with SLURM_CONF set: for the client commands and what they submit

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(args, env=self.env, capture_output=True, text=True, check=check, timeout=30)

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job``'s fields (JobState, Restarts, ...); empty once the controller forgot the job."""
        out = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        return dict(field.split("=", 1) for field in out.stdout.split() if "=" in field)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def slurm_conf(folder: Path, host: str) -> str:
    """The settings that work in this sandbox (/work/shared/TESTING-NOTES.md), every path under ``folder``."""
    return f"""\
ClusterName=hlrptest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={folder}/munge.socket,cred_expire={CRED_EXPIRE_S}
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SchedulerParameters=sched_interval=2
MpiDefault=none
MailProg=/bin/true
KillWait=5
MinJobAge=600
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def start_daemons(folder: Path, env: dict[str, str]) -> None:
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munged = [
        "munged",
        "--force",
        f"--key-file={key}",
        f"--socket={folder}/munge.socket",
        f"--pid-file={folder}/munged.pid",
        f"--log-file={folder}/munged.log",
        f"--seed-file={folder}/munged.seed",
    ]
    conf = str(folder / "slurm.conf")
    for command in (munged, ["slurmctld", "-f", conf], ["slurmd", "-f", conf]):
        subprocess.run(command, env=env, check=True, capture_output=True, timeout=30)


def wait_idle(env: dict[str, str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, check=False
        )
        if out.stdout.strip() == "idle":
            return
        time.sleep(0.5)
    raise TimeoutError(f"the node is not idle after {START_TIMEOUT_S} s")


def stop_daemons(folder: Path, env: dict[str, str]) -> None:
    """Cancel this cluster's jobs, then end each daemon by its pid file and wait for it."""
    subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True, check=False, timeout=30)
    for daemon in DAEMONS:
        pid_file = folder / f"{daemon}.pid"
        if not pid_file.is_file():
            continue
        pid = int(pid_file.read_text().split()[0])
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.2)


def log_tails(folder: Path) -> str:
    return " | ".join(
        f"{log.name}: {' / '.join(log.read_text(errors='replace').splitlines()[-3:])}"
        for log in sorted(folder.glob("*.log"))
    )


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    missing = [binary for binary in BINARIES if shutil.which(binary) is None]
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip(
            "the local Slurm cluster runs its daemons as root (SlurmUser=root); run the tests as root"
        )
    if (os.cpu_count() or 1) < 2:
        pytest.skip("the Slurm tests run 2 ranks on one node and need 2 CPUs")
    folder = Path(tempfile.mkdtemp(prefix="hlrp-slurm-"))
    folder.chmod(0o755)  # munged wants its socket's folder searchable by every user
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    (folder / "slurm.conf").write_text(slurm_conf(folder, socket.gethostname().split(".")[0]))
    env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
    try:
        start_daemons(folder, env)
        wait_idle(env)
    except (subprocess.SubprocessError, TimeoutError, OSError) as err:
        stop_daemons(folder, env)
        reason = f"the local Slurm cluster did not start ({err}): {log_tails(folder)}"
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(reason)
    yield SlurmCluster(folder, env)
    stop_daemons(folder, env)
    if not os.environ.get("HLRP_KEEP_SLURM"):
        shutil.rmtree(folder, ignore_errors=True)
