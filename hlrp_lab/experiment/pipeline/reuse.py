"""Which run a pipeline step reuses: the newest completed run of its spec whose status file records the
fingerprint of the spec the step would start now (``spec/fingerprint.py``)."""

from pathlib import Path

from hlrp_lab.experiment.lab import pin_references
from hlrp_lab.lib.layout import RunLayout
from hlrp_lab.lib.runs import COMPLETED, DATA_ROOT, FINGERPRINT, RUN_DIR_NAME, read_status
from hlrp_lab.spec.check import check_spec
from hlrp_lab.spec.fingerprint import spec_fingerprint
from hlrp_lab.spec.spec_util import override_mode, resolve_spec


def planned_fingerprint(spec_file: Path, spec_name: str, mode: str, sets: dict) -> str:
    """The fingerprint of the spec ``hlrp-lab run SPEC_FILE SPEC_NAME MODE -s ...`` would start from now:
    resolved, checked, its mode applied and its ``latest:`` references pinned, as ``lab.new_run`` records it."""
    spec = pin_references(override_mode(check_spec(resolve_spec(spec_file, spec_name, sets)), mode))
    return spec_fingerprint(spec, mode)


def reusable_run(spec_name: str, fingerprint: str, root: Path = DATA_ROOT) -> Path | None:
    """The newest completed run of ``spec_name`` under ``root`` that started from a spec with ``fingerprint``;
    None when there is none (failed, killed and running runs never count)."""
    found = []
    for path in root.glob(f"{spec_name}_*"):
        match = RUN_DIR_NAME.fullmatch(path.name)
        if not match or match["spec"] != spec_name:
            continue
        status = read_status(RunLayout(path, spec_name)) or {}
        if status.get("status") == COMPLETED and status.get(FINGERPRINT) == fingerprint:
            found.append((match["ts"], int(match["n"] or 0), path))
    return max(found)[2] if found else None
