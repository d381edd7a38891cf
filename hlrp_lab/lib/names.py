"""Names a user gives that become path components (spec names, run names): checked before any path exists."""

import re

from hlrp_lab.lib.errors import SpecError

# The longest names a run writes are its directory "{name}_{timestamp}_{n}" and the temporary file of a
# checkpoint's state (lib/layout.py); 128 characters leaves room for both within the 255-byte file-name limit
# of common file systems.
MAX_NAME_LENGTH = 128
SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


def check_name(name: str, what: str) -> str:
    """``name`` if it is safe as one path component: letters, digits, ``_``, ``-`` and ``.``, not starting with
    ``.``, at most MAX_NAME_LENGTH characters. ``what`` names it in the error (e.g. "spec name")."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise SpecError(
            f"{what} {name!r}: use letters, digits, '_', '-' and '.' only, not starting with '.' "
            "(it becomes a directory and file name)"
        )
    if len(name) > MAX_NAME_LENGTH:
        raise SpecError(
            f"{what} {name[:20]}...: {len(name)} characters, at most {MAX_NAME_LENGTH} "
            "(it becomes part of every file name the run writes)"
        )
    return name
