"""Errors the CLI turns into one line on stderr (no traceback)."""


class SpecError(ValueError):
    """A spec cannot be run as written: the message names the bad field and the fix. Exit code 2."""


class RunError(RuntimeError):
    """A run stopped for a reason the user can act on (named in the message). Exit code 1."""


class NonFiniteLossError(RunError):
    """The loss became NaN or inf; the last good checkpoint is left as it was."""


# The exit code of a run stopped by a stop request (lib.stop) after writing its `last` checkpoint: EX_TEMPFAIL,
# "try again"; a Slurm job script requeues the job on it.
REQUEUE_EXIT_CODE = 75


class Interrupted(RunError):
    """The run stopped on request after writing its `last` checkpoint; resuming continues it. Exit code 75."""


class CheckpointError(RunError):
    """A checkpoint is missing or inconsistent."""


def first_line(err: BaseException) -> str:
    """``Type: first line of the message`` of ``err`` (just ``Type`` when it has no message)."""
    line = str(err).strip().partition("\n")[0]
    return f"{type(err).__name__}: {line}" if line else type(err).__name__
