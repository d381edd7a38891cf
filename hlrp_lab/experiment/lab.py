"""What ``hlrp-lab run`` does for each mode: resolve and check the spec, make the run directory, run.

Under torchrun every rank runs this: each checks the spec, rank 0 alone prepares the data and makes the run
directory, and the others take the spec it saved (seed, run directory) before the sessions start together.
"""

import contextlib
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydash
from loguru import logger

from hlrp_lab.experiment.build import dry_build
from hlrp_lab.experiment.control import Trial
from hlrp_lab.experiment.distributed import process_group
from hlrp_lab.experiment.experiment import Experiment
from hlrp_lab.experiment.report import write_report
from hlrp_lab.experiment.search import check_ray_address
from hlrp_lab.lib.distributed import barrier, broadcast_from_main
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.layout import RunLayout
from hlrp_lab.lib.logger import setup_logger
from hlrp_lab.lib.names import check_name
from hlrp_lab.lib.runs import (
    DATA_ROOT,
    LATEST,
    LATEST_DEV,
    announce_run_dir,
    newest_run,
    recorded_status,
    resolve_reference,
    set_fingerprint,
    write_spec,
)
from hlrp_lab.lib.util import git_sha, make_run_dir, timestamp
from hlrp_lab.lib.world import World
from hlrp_lab.spec.check import check_spec, load_run_spec
from hlrp_lab.spec.fingerprint import spec_fingerprint
from hlrp_lab.spec.search_space import check_search_mode
from hlrp_lab.spec.spec_util import (
    Mode,
    check_launch,
    override_mode,
    resolve_spec,
)
from hlrp_lab.stages import STAGES


def run_lab(spec_file: Path, spec_name: str, mode: Mode, sets: dict, keep: int = 3) -> Path:
    """Run ``spec_name`` in ``mode``; return the run directory. A search keeps the model files of its best
    ``keep`` trials (-1: all). Everything that can be checked (spec, references, data) is checked before the
    run directory exists; a run that fails after is marked failed in its status file (``RunLayout.status``)."""
    check_name(spec_name, "spec name")
    check_launch(mode.name, World.launched().size)
    if mode.name == "eval":
        return evaluate_run(mode.run_dir or latest_run_dir(spec_name), spec_name)
    if mode.resume:
        return resume_run(mode.run_dir, spec_name, sets)
    spec = override_mode(dry_build(check_spec(resolve_spec(spec_file, spec_name, sets))), mode.name)
    setup_logger(quiet=not World.launched().main)  # the console, until the run directory exists
    with process_group(spec) as world:
        spec = broadcast_from_main(new_run(spec, spec_file, spec_name, mode) if world.main else None)
        body = (lambda: Experiment(spec).search(keep)) if mode.name == "search" else Trial(spec).run
        opening = f"{spec_name} {mode.name}: writing to {spec['meta']['run_dir']}"
        run_on_ranks(RunLayout.of(spec), body, world, opening)
    return Path(spec["meta"]["run_dir"])


def new_run(spec: dict, spec_file: Path, spec_name: str, mode: Mode) -> dict:
    """Check what the spec refers to and its data, make the run directory and save the spec there; the spec
    as saved (rank 0 only)."""
    spec = pin_references(spec)
    fingerprint = spec_fingerprint(spec, mode.name)  # before the lab's keys: what `pipeline` compares
    check_search_mode(spec, spec_name, mode.name)
    STAGES.get(spec["stage"], "stage").prepare_data(spec)  # data readable and splittable, before any run dir
    if mode.name == "search":
        check_ray_address()  # a cluster named by RAY_ADDRESS answers
    ts = timestamp()
    run_dir = make_run_dir(DATA_ROOT, spec_name, ts)
    meta = spec["meta"]
    meta.update(spec_name=spec_name, spec_file=str(spec_file), mode=mode.name, run_dir=str(run_dir))
    meta.update(experiment_ts=ts, git_sha=git_sha())
    if meta["random_seed"] is None:
        meta["random_seed"] = secrets.randbelow(2**31)
    layout = RunLayout(run_dir, spec_name)
    write_spec(layout.spec_file, spec_name, spec)
    set_fingerprint(layout, fingerprint)
    return spec


def run_on_ranks(layout: RunLayout, body: Callable[[], Any], world: World, opening: str) -> None:
    """``body`` on every rank, logging to the run's log (rank 0, which opens it with ``opening``) and the
    console; rank 0 records the status."""
    setup_logger(layout.log_file() if world.main else None, quiet=not world.main)
    if world.main:
        announce_run_dir(layout.run_dir)
        logger.info(opening)
    if world.distributed:
        logger.info(f"{layout.spec_name}: {world.size} ranks, this is rank {world.rank}")
    try:
        with recorded_status(layout) if world.main else contextlib.nullcontext():
            body()
    finally:
        if world.main:
            write_run_report(layout)


def write_run_report(layout: RunLayout) -> None:
    """``report.html`` of what the run has written so far (after a failure too); a report that cannot be
    written is a warning, not a failed run."""
    try:
        logger.info(f"report: {write_report(layout.run_dir, layout.spec_name)}")
    except Exception as error:  # noqa: BLE001 (the run's results stand without their report)
        logger.warning(f"report.html not written ({type(error).__name__}: {error}); try `hlrp-lab report`")


def pin_references(node: Any, key: str = "") -> Any:
    """``node`` with every ``latest:<spec_name>`` (or ``latest-dev:``) replaced by the run directory it names
    now, so that the saved spec reproduces the run even after newer runs of that spec."""
    if isinstance(node, dict):
        return {k: pin_references(v, f"{key}.{k}" if key else k) for k, v in node.items()}
    if isinstance(node, list):
        return [pin_references(v, f"{key}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str) and node.startswith((LATEST, LATEST_DEV)):
        return str(resolve_reference(node, key).run_dir)
    return node


def resume_run(run_dir: Path, spec_name: str, sets: dict) -> Path:
    """``train@RUN_DIR``: continue every session from its `last` checkpoint (dotted -s keys may override), on
    any number of ranks."""
    plain = [key for key in sets if "." not in key]
    if plain:
        raise SpecError(f"-s {plain[0]}: a resumed run uses its saved spec; only dotted keys can override it")
    spec = load_run_spec(run_dir, spec_name, sets)
    layout = RunLayout(run_dir, spec_name)
    setup_logger(quiet=not World.launched().main)
    with process_group(spec) as world:
        if world.main:
            STAGES.get(spec["stage"], "stage").prepare_data(spec)
        barrier()
        run_on_ranks(layout, Trial(spec).run, world, f"{spec_name}: resuming {run_dir}")
    if sets and world.main:  # only once they worked: a failed override must not stick to the run
        pydash.set_(spec, "meta.variables", {**spec["meta"]["variables"], **sets})
        write_spec(layout.spec_file, spec_name, spec)
        set_fingerprint(layout, None)  # no longer the spec it started from
    return run_dir


def evaluate_run(run_dir: Path, spec_name: str) -> Path:
    """``eval``: evaluate the best checkpoint of every session of a run."""
    spec = load_run_spec(run_dir, spec_name)
    spec = STAGES.config_class(spec["stage"], "stage").eval_mode(spec)
    setup_logger(RunLayout(run_dir, spec_name).log_file())
    logger.info(f"{spec_name} eval: best checkpoints of {run_dir}")
    Trial(spec).evaluate()
    write_run_report(RunLayout(run_dir, spec_name))
    return run_dir


def latest_run_dir(spec_name: str, root: Path = DATA_ROOT) -> Path:
    """The newest completed ``{spec_name}_{timestamp}`` directory under ``root``, dev runs included (eval
    names the spec itself, so a dev run of it is what the user asks for when it is the newest)."""
    run_dir = newest_run(spec_name, root, dev=True)
    if run_dir is None:
        raise SpecError(
            f"no completed run of {spec_name!r} under {root}/; train one first or pass eval@RUN_DIR"
        )
    return run_dir
