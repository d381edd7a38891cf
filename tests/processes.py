"""Process checks shared by the tests that kill launchers."""

import psutil


def is_running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (an orphan waits for whoever adopted it to reap it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
