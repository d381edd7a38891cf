"""Errors the CLI turns into one line on stderr (no traceback)."""


class SpecError(ValueError):
    """A spec cannot be run as written: the message names the bad field and the fix. Exit code 2."""


class RunError(RuntimeError):
    """A run stopped for a reason the user can act on (named in the message). Exit code 1."""


class NonFiniteLossError(RunError):
    """The loss became NaN or inf; the last good checkpoint is left as it was."""


class CheckpointError(RunError):
    """A checkpoint is missing or inconsistent."""
