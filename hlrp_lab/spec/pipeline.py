"""Pipeline specs: stage specs run in order, a later step using an earlier step's run (no torch).

A pipeline file maps names to pipelines, as a spec file maps names to specs (docs/PIPELINE.md):

    {"chain_debug": {
        "steps": {
            "laq": {"spec_file": "specs/laq.json", "spec_name": "laq_debug"},
            "foundation": {"spec_file": "specs/foundation.json", "spec_name": "vla_debug",
                           "sets": {"data.source.laq": "${steps.laq}"}},
            "foundation_eval": {"mode": "eval", "of": "foundation"}},
        "seeds": 2,
        "report": {"metrics": ["val_psnr", "val_token_acc"], "anchors": {"paper": {"val_token_acc": 0.8}}}}}

``-s var=value`` fills ``${var}`` anywhere in the pipeline; ``-s STEP.key=value`` sets one of that step's
``sets``. A step's ``sets`` are the ``-s`` values ``hlrp-lab run`` would get, where ``${steps.NAME}`` becomes the
run directory of the earlier step NAME when the pipeline reaches the step.
"""

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, PositiveInt

from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.names import check_name
from hlrp_lab.lib.registry import Strict, printable, validate_model
from hlrp_lab.spec.check import check_spec, check_unresolved
from hlrp_lab.spec.spec_util import (
    check_key_placeholders,
    read_spec_file,
    resolve_spec,
    spec_variables,
    substitute,
)

STEP_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
STEP_REF = re.compile(r"\$\{steps\.([^}]*)\}")
PIPELINE_MODES = ("train", "dev")
MAX_SESSION = "meta.max_session"


class Step(Strict):
    """One step: a stage spec run as ``hlrp-lab run SPEC_FILE SPEC_NAME MODE -s ...``, or the ``eval`` of an
    earlier step's run."""

    spec_file: str | None = Field(None, description="The stage spec file, e.g. specs/laq.json.")
    spec_name: str | None = Field(None, description="The spec in that file, e.g. laq_debug.")
    mode: Literal["dev", "train", "search", "eval"] = Field(
        "train", description="As `hlrp-lab run` takes it; eval evaluates the run of the step named by `of`."
    )
    of: str | None = Field(None, description="An eval step: the earlier step whose run it evaluates.")
    sets: dict[str, Any] = Field(
        default_factory=dict,
        description="The step's `-s` values: NAME fills ${NAME} of the stage spec, a dotted key overrides "
        "it; ${steps.NAME} is the run directory of the earlier step NAME.",
    )
    seeds: PositiveInt | None = Field(
        None, description="Sessions (meta.max_session) of this step; default: the pipeline's seeds."
    )

    @property
    def evaluates(self) -> bool:
        return self.mode == "eval"


class Report(Strict):
    """The study table the pipeline ends with."""

    metrics: list[str] = Field(
        default_factory=list,
        description="Metrics tabulated and plotted for each step (its trial metrics, or an eval step's eval "
        "metrics), as mean ± std over seeds; empty: the stage metric of each step.",
    )
    anchors: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Fixed reference rows beside the steps' (e.g. a published result): label -> {metric: value}.",
    )


class Pipeline(Strict):
    variables: dict[str, Any] = Field(
        default_factory=dict,
        description="Default values of the pipeline's ${NAME} variables; -s NAME=VALUE wins.",
    )
    steps: dict[str, Step] = Field(min_length=1, description="The steps, run in this order.")
    seeds: PositiveInt | None = Field(
        None, description="Sessions (meta.max_session) of every step that does not give its own seeds."
    )
    report: Report = Field(default_factory=Report, description="The study table.")


def read_pipeline(path: str | Path, name: str, sets: dict[str, Any], seeds: int | None = None) -> Pipeline:
    """The pipeline ``name`` of the file ``path`` with ``-s`` values applied (``var=value`` fills ``${var}``,
    ``STEP.key=value`` sets a step's ``sets``) and ``seeds`` (``--seeds``) for every step, checked."""
    pipelines = read_spec_file(path)
    check_name(name, "pipeline name")
    if name not in pipelines:
        raise SpecError(f"{path}: no pipeline named {name!r}; pipelines in this file: {', '.join(pipelines)}")
    raw = pipelines[name]
    check_key_placeholders(raw)
    variables = {k: v for k, v in sets.items() if "." not in k}
    used = spec_variables(raw)
    for var in variables:
        if var not in used:
            known = ", ".join(sorted(used)) or "none"
            raise SpecError(
                f"-s {printable(var)}: pipeline {name!r} has no ${{{printable(var)}}}; its variables: {known} "
                "(-s STEP.key=VALUE sets a key of one step's spec)"
            )
    pipeline = validated(substitute(raw, {**default_variables(raw), **variables}))
    for key, value in sets.items():
        if "." in key:
            set_step_value(pipeline, key, value)
    if seeds is not None:
        for step in pipeline.steps.values():
            if not step.evaluates:
                step.seeds = seeds
    check_pipeline(pipeline)
    return pipeline


def default_variables(raw: Any) -> dict[str, Any]:
    """The pipeline's ``variables`` block (defaults of its ${NAME}s), empty where it has none or a bad one (the
    schema then names it)."""
    defaults = raw.get("variables") if isinstance(raw, dict) else None
    return defaults if isinstance(defaults, dict) else {}


def validated(data: Any) -> Pipeline:
    """``data`` as a Pipeline; an unknown key names the keys allowed where it is."""
    check_keys(data, Pipeline, "", "a pipeline")
    if isinstance(data, dict):
        steps = data.get("steps")
        for name, step in steps.items() if isinstance(steps, dict) else ():
            check_keys(step, Step, f"steps.{name}", "a step")
        check_keys(data.get("report"), Report, "report", "report")
    return validate_model(Pipeline, data, "")


def check_keys(node: Any, model: type[BaseModel], key: str, what: str) -> None:
    """Every key of ``node`` (when an object) is a field of ``model``."""
    if not isinstance(node, dict):
        return
    for name in node:
        if name not in model.model_fields:
            where = printable(f"{key}.{name}" if key else name)
            raise SpecError(
                f"{where}: unknown key; {what} takes {', '.join(model.model_fields)} (docs/PIPELINE.md)"
            )


def set_step_value(pipeline: Pipeline, key: str, value: Any) -> None:
    """``-s STEP.key=value``: set ``key`` in the step's ``sets``."""
    name, _, spec_key = key.partition(".")
    step = pipeline.steps.get(name)
    if step is None:
        raise SpecError(
            f"-s {printable(key)}: {printable(name)!r} is not a step; steps: {', '.join(pipeline.steps)} "
            "(-s STEP.key=VALUE sets a key of that step's spec, -s var=VALUE fills ${var})"
        )
    if step.evaluates:
        raise SpecError(
            f"-s {printable(key)}: step {name!r} evaluates the run of {step.of!r} as it was trained"
        )
    step.sets[spec_key] = value


def check_pipeline(pipeline: Pipeline) -> None:
    """Step names, what each kind of step takes, references to earlier steps only, anchors of tabulated
    metrics."""
    earlier: list[str] = []
    for name, step in pipeline.steps.items():
        key = f"steps.{printable(name)}"
        if not STEP_NAME.fullmatch(name):
            raise SpecError(
                f"{key}: a step name is 1-64 letters, digits, '_' and '-' (${{steps.NAME}} refers to it)"
            )
        check_step(step, key, earlier, pipeline)
        earlier.append(name)
    anchored = {m for values in pipeline.report.anchors.values() for m in values}
    missing = sorted(anchored - set(pipeline.report.metrics))
    if missing:
        raise SpecError(
            f"report.anchors: {missing[0]!r} is not in report.metrics; add it there or fix the anchor's metric"
        )


def check_step(step: Step, key: str, earlier: list[str], pipeline: Pipeline) -> None:
    before = ", ".join(earlier) or "none"
    if step.evaluates:
        if step.of is None:
            raise SpecError(f"{key}.of: an eval step names the earlier step whose run it evaluates")
        if step.of not in earlier or pipeline.steps[step.of].evaluates:
            raise SpecError(f"{key}.of: {step.of!r} is not an earlier training step; earlier steps: {before}")
        given = [field for field in ("spec_file", "spec_name", "seeds") if getattr(step, field) is not None]
        if given or step.sets:
            field = given[0] if given else "sets"
            raise SpecError(
                f"{key}.{field}: an eval step evaluates the run of step {step.of!r} as it was trained; remove it"
            )
        return
    if step.of is not None:
        raise SpecError(f"{key}.of: only an eval step (mode eval) names a run to evaluate; remove it")
    for field in ("spec_file", "spec_name"):
        if getattr(step, field) is None:
            raise SpecError(f"{key}.{field}: required key is missing")
    for set_key, ref in step_references(step.sets):
        if ref not in earlier:
            raise SpecError(
                f"{key}.sets.{printable(set_key)}: ${{steps.{printable(ref)}}} is not an earlier step; earlier "
                f"steps: {before} (a step uses the runs of the steps before it)"
            )


def step_references(node: Any, key: str = "") -> list[tuple[str, str]]:
    """(key, step name) of every ``${steps.NAME}`` in a step's ``sets``."""
    if isinstance(node, dict):
        return [ref for k, v in node.items() for ref in step_references(v, f"{key}.{k}" if key else k)]
    if isinstance(node, list):
        return [ref for i, v in enumerate(node) for ref in step_references(v, f"{key}[{i}]")]
    return [(key, name) for name in STEP_REF.findall(node)] if isinstance(node, str) else []


def with_runs(node: Any, runs: dict[str, str]) -> Any:
    """``node`` with every ``${steps.NAME}`` of a step in ``runs`` replaced by that step's run directory."""
    if isinstance(node, dict):
        return {k: with_runs(v, runs) for k, v in node.items()}
    if isinstance(node, list):
        return [with_runs(v, runs) for v in node]
    if not isinstance(node, str):
        return node
    return STEP_REF.sub(lambda m: runs.get(m[1], m[0]), node)


def step_sets(pipeline: Pipeline, name: str, runs: dict[str, str]) -> dict[str, Any]:
    """The ``-s`` values of a training step: its ``sets`` with the earlier steps' ``runs`` filled in, and its
    seeds (the step's, else the pipeline's) as ``meta.max_session``."""
    step = pipeline.steps[name]
    sets = with_runs(step.sets, runs)
    seeds = step.seeds or pipeline.seeds
    return sets | ({MAX_SESSION: seeds} if seeds is not None else {})


def step_mode(step: Step, pipeline_mode: str) -> str:
    """The mode a step runs in: its own, or ``dev`` for every training step of a ``dev`` pipeline."""
    return "dev" if pipeline_mode == "dev" and not step.evaluates else step.mode


def check_force(pipeline: Pipeline, force: list[str]) -> None:
    """``--force STEP`` names steps of the pipeline."""
    for name in force:
        if name not in pipeline.steps:
            raise SpecError(f"--force {printable(name)}: not a step; steps: {', '.join(pipeline.steps)}")


def check_pipeline_mode(mode: str) -> None:
    if mode not in PIPELINE_MODES:
        raise SpecError(
            f"mode {mode!r}: a pipeline runs in train (each step in its own mode) or dev (every training step "
            "in dev mode: a quick check of the chain)"
        )


def load_pipeline(
    path: str | Path, name: str, mode: str, sets: dict[str, Any], force: list[str], seeds: int | None = None
) -> Pipeline:
    """``read_pipeline`` with the mode, ``--force`` and every training step's spec checked: all that ``hlrp-lab
    pipeline`` checks before it writes anything, in under a second (no torch)."""
    check_pipeline_mode(mode)
    pipeline = read_pipeline(path, name, sets, seeds)
    check_force(pipeline, force)
    check_steps(pipeline)
    return pipeline


def is_pipeline(entry: dict) -> bool:
    """Whether an entry of a spec file is a pipeline (it has steps, not a stage): ``spec check`` checks both."""
    return "steps" in entry and "stage" not in entry


def check_unresolved_pipeline(raw: dict) -> None:
    """Check a pipeline whose ${var}s are unset (``spec check``): its keys and steps, and each training step's
    spec with the placeholders left as text where a string is valid (``check_unresolved``)."""
    check_key_placeholders(raw)
    unset = {name: f"${{{name}}}" for name in spec_variables(raw)}  # left as their text
    pipeline = validated(substitute(raw, {**unset, **default_variables(raw)}))
    check_pipeline(pipeline)
    for name, step in pipeline.steps.items():
        if not step.evaluates:
            try:
                check_unresolved(resolve_spec(step.spec_file, step.spec_name, step_sets(pipeline, name, {})))
            except SpecError as err:
                raise SpecError(f"steps.{name} ({step.spec_name}): {err}") from None


def check_steps(pipeline: Pipeline) -> None:
    """Check every training step's spec as ``run`` would before it starts (no torch), so that a bad later step
    fails before the first one trains; references to earlier steps stay as they are written."""
    for name, step in pipeline.steps.items():
        if step.evaluates:
            continue
        try:
            check_spec(resolve_spec(step.spec_file, step.spec_name, step_sets(pipeline, name, {})))
        except SpecError as err:
            raise SpecError(f"steps.{name} ({step.spec_name}): {err}") from None
