"""Run a pipeline: check every step, then run each in order through ``run_lab`` (the code path of ``hlrp-lab
run``) unless a completed run of the same spec can be reused, record the run each step used, and end with the
study report.

```
data/{pipeline}_{timestamp}/
  pipeline.json   the pipeline as it ran (-s values applied), its status, and each step's run (reused or new)
  pipeline.log    what the pipeline did (each run logs to its own directory)
  study.html, study.md
```
"""

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from loguru import logger

from hlrp_lab.experiment.lab import run_lab
from hlrp_lab.experiment.pipeline.reuse import planned_fingerprint, reusable_run
from hlrp_lab.experiment.report.study import NEW, REUSED, StepRun, study_trial, write_study
from hlrp_lab.lib.errors import Interrupted, RunError, SpecError, first_line
from hlrp_lab.lib.layout import RunLayout
from hlrp_lab.lib.logger import setup_logger
from hlrp_lab.lib.runs import COMPLETED, DATA_ROOT, FAILED, INTERRUPTED, RUN_DIR_FILE, RUNNING
from hlrp_lab.lib.scrub import mask_secret_keys, scrub_text, secret_values
from hlrp_lab.lib.util import timestamp, write_json
from hlrp_lab.spec.pipeline import Pipeline, step_mode, step_sets
from hlrp_lab.spec.spec_util import Mode

RECORD, LOG = "pipeline.json", "pipeline.log"


@dataclass(frozen=True)
class PipelineResult:
    """The pipeline's directory, the run of each step, and the study as Markdown."""

    run_dir: Path
    steps: list[StepRun]
    markdown: str


def run_pipeline(
    pipeline: Pipeline, name: str, mode: str, force: list[str], spec_file: Path, sets: dict[str, Any]
) -> PipelineResult:
    """Run the checked ``pipeline`` (``spec.pipeline.load_pipeline``: ``name`` in ``spec_file`` with the ``-s``
    values ``sets``) in ``mode`` (train: each step in its own mode; dev: every training step in dev mode);
    ``force`` names steps that run even when a run can be reused. A step that fails stops the pipeline with one
    line naming it and its run directory."""
    run_dir = make_pipeline_dir(DATA_ROOT, name)
    record = {"pipeline": name, "file": str(spec_file), "variables": sets, "mode": mode, "force": force}
    record["spec"] = pipeline.model_dump()
    log = run_dir / LOG
    setup_logger(log)
    logger.info(f"pipeline {name} {mode}: {', '.join(pipeline.steps)}; writing to {run_dir}")
    done: list[StepRun] = []
    for step in pipeline.steps:
        write_record(run_dir, record, done, RUNNING)
        try:
            done.append(run_step(pipeline, step, mode, done, step in force, run_dir))
        except StepFailed as failed:
            write_record(run_dir, {**record, "failed": failed.details}, done, FAILED)
            raise failed.error from None
        except Interrupted:
            write_record(run_dir, record, done, INTERRUPTED)
            raise
        finally:
            setup_logger(log)  # a run logs to its own directory
    report = pipeline.report
    header = {"pipeline": name, "file": str(spec_file), "mode": mode, "directory": str(run_dir)}
    html, markdown = write_study(run_dir, name, header, done, report.metrics, report.anchors)
    write_record(run_dir, record, done, COMPLETED)
    logger.info(f"pipeline {name}: study in {html} and {markdown}")
    return PipelineResult(run_dir, done, markdown.read_text())


def make_pipeline_dir(root: Path, name: str) -> Path:
    """``root/{name}_{timestamp}``; a pipeline started in the same second gets ``_1``, ``_2``, ..."""
    ts = timestamp()
    root.mkdir(parents=True, exist_ok=True)
    for suffix in ["", *(f"_{i}" for i in range(1, 1000))]:
        with contextlib.suppress(FileExistsError):
            (path := root / f"{name}_{ts}{suffix}").mkdir()
            return path
    raise FileExistsError(f"no free pipeline directory for {name}_{ts} under {root}")


def write_record(run_dir: Path, record: dict, done: list[StepRun], status: str) -> None:
    """``pipeline.json``: the pipeline, its status and the run of each step so far (secret values masked)."""
    steps = [{**asdict(step), "run_dir": str(step.run_dir)} for step in done]
    write_json(run_dir / RECORD, mask_secret_keys({**record, "status": status, "steps": steps}))


class StepFailed(Exception):
    """A step failed: the one-line error to raise, and what the record says (step, run directory, error)."""

    def __init__(self, error: Exception, details: dict[str, str | None]):
        super().__init__(str(error))
        self.error, self.details = error, details


def run_step(
    pipeline: Pipeline, name: str, mode: str, done: list[StepRun], force: bool, pipeline_dir: Path
) -> StepRun:
    """Reuse or run one step; ``done``: the earlier steps' runs."""
    step = pipeline.steps[name]
    if step.evaluates:
        target = next(s for s in done if s.step == step.of)
        evaluated = RunLayout(target.run_dir, target.spec_name)
        if not force and evaluated.eval_metrics(study_trial(evaluated)).is_file():
            logger.info(f"step {name}: reused the evaluation of {target.run_dir} (step {step.of})")
            return StepRun(name, target.spec_name, "eval", target.run_dir, REUSED)
        logger.info(f"step {name}: evaluating {target.run_dir} (step {step.of})")
        spec_file = Path(pipeline.steps[step.of].spec_file)
        body = partial(run_lab, spec_file, target.spec_name, Mode("eval", target.run_dir), {})
        in_step(body, name, target.spec_name, pipeline_dir, target.run_dir)
        return StepRun(name, target.spec_name, "eval", target.run_dir, NEW)
    lab_mode, spec_file = step_mode(step, mode), Path(step.spec_file)
    sets = step_sets(pipeline, name, {s.step: str(s.run_dir) for s in done})
    try:
        fingerprint = planned_fingerprint(spec_file, step.spec_name, lab_mode, sets)
    except SpecError as err:
        raise SpecError(f"step {name} ({step.spec_name}): {err}") from None
    found = None if force else reusable_run(step.spec_name, fingerprint)
    if found is not None:
        logger.info(
            f"step {name}: reused {found}, a completed {step.spec_name} {lab_mode} run of the same spec"
        )
        return StepRun(name, step.spec_name, lab_mode, found, REUSED)
    logger.info(f"step {name}: {step.spec_name} {lab_mode}" + (" (--force)" if force else ""))
    body = partial(run_lab, spec_file, step.spec_name, Mode(lab_mode), sets)
    return StepRun(name, step.spec_name, lab_mode, in_step(body, name, step.spec_name, pipeline_dir), NEW)


def in_step(
    body: Callable[[], Path], name: str, spec_name: str, pipeline_dir: Path, run_dir: Path | None = None
) -> Path:
    """``body()``, a ``run_lab`` call whose run directory is ``run_dir`` (eval) or the one it makes. Any error
    becomes a StepFailed: one line naming the step and that run directory (a SpecError when the step's spec or
    data could not run, and nothing was written)."""
    with announced_run_dir(pipeline_dir / f".{name}_run_dir") as announced:
        try:
            made = body()
        except Interrupted:
            raise
        except Exception as err:  # whatever failed, the pipeline stops with one line
            where = run_dir or announced()
            line = scrub_text(first_line(err), secret_values())
            details = {"step": name, "run_dir": None if where is None else str(where), "error": line}
            if where is None and isinstance(err, SpecError):  # its spec or data cannot run: nothing written
                raise StepFailed(SpecError(f"step {name} ({spec_name}): {err}"), details) from err
            ran = f"its run directory: {where}" if where else "no run directory was made"
            error = RunError(
                f"step {name} ({spec_name}) failed: {line}; {ran}; the runs of the steps before it are kept, "
                "and running the pipeline again reuses them"
            )
            raise StepFailed(error, details) from err
    logger.info(f"step {name}: {'evaluated' if run_dir else 'ran'} {made}")
    return made


@contextlib.contextmanager
def announced_run_dir(path: Path) -> Iterator[Callable[[], Path | None]]:
    """While inside, the lab writes the run directory it makes into ``path`` (``lib.runs.RUN_DIR_FILE``, as for
    a launcher); yields a function that reads it (None before the lab made one)."""
    previous = os.environ.get(RUN_DIR_FILE)
    os.environ[RUN_DIR_FILE] = str(path)
    try:
        yield lambda: Path(path.read_text()) if path.is_file() else None
    finally:
        path.unlink(missing_ok=True)
        if previous is None:
            os.environ.pop(RUN_DIR_FILE, None)
        else:
            os.environ[RUN_DIR_FILE] = previous
