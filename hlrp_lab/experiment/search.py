"""Search mode: Ray Tune samples trials from the spec's ``search`` block; ASHA stops unpromising ones early.

Ray starts locally (or joins the cluster at ``RAY_ADDRESS``, or the instance the caller started) and keeps
its files under the run directory (``ray/tune/{spec_name}_t{i}``).
"""

import logging
import os
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

from hlrp_lab.components.registry import STAGES
from hlrp_lab.experiment.results import COMPLETED, FAILED, INTERRUPTED, STOPPED_EARLY, TrialRecord
from hlrp_lab.experiment.search_space import LOG_SAMPLERS, SearchKey, parse_search, trial_spec

# Set before Ray is imported (an environment variable already set wins): no usage statistics; trials keep
# the lab's working directory; under `uv run`, Ray does not package the lab and build a virtual environment
# per worker (the workers use this environment).
RAY_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
}


@dataclass
class SearchOutcome:
    records: list[TrialRecord]  # by trial index
    params: list[str]  # the searched spec paths
    log_params: set[str]  # those sampled on a log scale
    interrupted: bool  # Ctrl-C: some trials neither ended nor failed


def set_ray_defaults() -> None:
    """Set ``RAY_DEFAULTS`` not already set; call before Ray is imported."""
    for name, value in RAY_DEFAULTS.items():
        os.environ.setdefault(name, value)


def run_search(spec: dict) -> SearchOutcome:
    """Run every trial of ``spec``'s search with Ray Tune and record how each ended."""
    set_ray_defaults()
    import ray

    from hlrp_lab.experiment.tune_trial import TrialLog

    keys = parse_search(spec["search"])
    log = TrialLog(keys, STAGES.get(spec["stage"], "stage").metric)
    owns_ray = not ray.is_initialized()
    if owns_ray:
        init_ray()
    try:
        grid = make_tuner(spec, keys, log).fit()
    finally:
        if owns_ray:
            ray.shutdown()
    started = [result for result in grid if result.config is not None]  # Ctrl-C leaves some never started
    records = sorted(
        (trial_record(spec, keys, result, log.ended) for result in started), key=lambda r: r.trial
    )
    return SearchOutcome(
        records,
        [key.path for key in keys],
        {key.path for key in keys if key.sampler in LOG_SAMPLERS},
        any(record.status == INTERRUPTED for record in records),
    )


def init_ray() -> None:
    """Join the cluster at ``RAY_ADDRESS`` if set, else start a new Ray instance on this machine (even if a
    cluster started by `ray start` runs here), without dashboard."""
    import ray

    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False, logging_level=logging.WARNING)
    else:
        ray.init("local", include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)


def make_tuner(spec: dict, keys: list[SearchKey], log: Any) -> Any:
    """The Tuner: trials named ``{spec_name}_t{i}``, the stage's metric, the meta block's search settings."""
    from ray import tune

    from hlrp_lab.experiment.tune_trial import run_trial

    meta, stage_cls = spec["meta"], STAGES.get(spec["stage"], "stage")
    indices = count()

    def trial_name(trial: Any) -> str:
        return f"{meta['spec_name']}_t{next(indices)}"

    resources = meta["search_resources"]
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec=spec, keys=keys, lab_dir=str(Path.cwd())),
        {"cpu": resources["cpu"], "gpu": resources["gpu"]},
    )
    return tune.Tuner(
        trainable,
        param_space={key.path: key.domain() for key in keys},
        tune_config=tune.TuneConfig(
            metric=stage_cls.metric,
            mode=stage_cls.metric_mode,
            search_alg=search_algorithm(meta),
            scheduler=scheduler(spec),
            num_samples=meta["max_trial"],
            trial_name_creator=trial_name,
            trial_dirname_creator=lambda trial: trial.custom_trial_name,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str((Path(meta["run_dir"]) / "ray").absolute()),
            callbacks=[log],
            verbose=0,
        ),
    )


def search_algorithm(meta: dict) -> Any:
    """Random sampling, or Optuna's TPE; both seeded by ``meta.random_seed``."""
    if meta["search_algorithm"] == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=meta["random_seed"])
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=meta["random_seed"])


def scheduler(spec: dict) -> Any:
    """ASHA on the reported ``step`` when ``meta.search_scheduler`` is set; else every trial runs to the end."""
    config = spec["meta"]["search_scheduler"]
    if config is None:
        return None
    from ray.tune.schedulers import AsyncHyperBandScheduler

    return AsyncHyperBandScheduler(
        time_attr="step",
        max_t=config["max_t"] or spec["train"]["max_step"],
        grace_period=config["grace_period"],
        reduction_factor=config["reduction_factor"],
    )


def trial_record(spec: dict, keys: list[SearchKey], result: Any, ended: set[str]) -> TrialRecord:
    """How one Tune trial ended: failed (with its error), completed, stopped early, or interrupted."""
    from hlrp_lab.experiment.tune_trial import trial_index

    name = Path(result.path).name
    trial, applied = trial_spec(spec, keys, result.config, trial_index(name))
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}
    record = TrialRecord(trial["meta"]["trial"], INTERRUPTED, metrics, trial, applied)
    if result.error is not None:
        record.status, record.error = FAILED, error_summary(result.error)
    elif name in ended:
        done = metrics.get("step", 0) >= trial["train"]["max_step"]
        record.status = COMPLETED if done else STOPPED_EARLY
    return record


def error_summary(error: BaseException) -> str:
    """``Type: first line of the message`` of what a trial raised (Ray wraps it: its ``cause``)."""
    cause = getattr(error, "cause", None) or error
    first_line = str(cause).strip().partition("\n")[0]
    return f"{type(cause).__name__}: {first_line}" if first_line else type(cause).__name__
