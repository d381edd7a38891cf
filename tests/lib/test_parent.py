"""A process that called die_with_parent ends when its parent does, even from a session of its own (as
torchrun starts ranks), where a signal to the parent's process group does not reach it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import is_running

CHILD = """
import subprocess, sys
grandchild = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], start_new_session=True)
print(grandchild.pid, flush=True)
grandchild.wait()
"""
GRANDCHILD = """
import sys, time
from pathlib import Path
if sys.argv[2] == "1":
    from hlrp_lab.lib.parent import die_with_parent
    die_with_parent()
Path(sys.argv[1]).write_text("ready")
time.sleep(60)
"""


def grandchild_after_killing_its_parent(tmp_path: Path, die: bool) -> bool:
    """Whether the grandchild is still alive 3 s after its parent was killed with SIGKILL."""
    ready = tmp_path / f"ready{int(die)}"
    grandchild_code = GRANDCHILD.replace("sys.argv[1]", repr(str(ready))).replace(
        "sys.argv[2]", repr(str(int(die)))
    )
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, grandchild_code, "x"], stdout=subprocess.PIPE, text=True
    )
    pid = int(child.stdout.readline())
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        deadline = time.monotonic() + 3
        while is_running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        return is_running(pid)
    finally:
        if is_running(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_process_in_its_own_session_dies_with_its_parent_only_after_die_with_parent(tmp_path):
    assert grandchild_after_killing_its_parent(tmp_path, die=False)  # the orphan lives on without it
    assert not grandchild_after_killing_its_parent(tmp_path, die=True)
