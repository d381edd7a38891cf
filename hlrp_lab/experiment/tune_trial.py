"""What runs inside Ray Tune: one search trial (in a Ray worker) and the driver's log of trials."""

import os
from typing import Any

from loguru import logger
from ray import tune
from ray.tune.experiment import Trial as TuneTrial

from hlrp_lab.experiment.control import Trial
from hlrp_lab.experiment.loop import format_metrics
from hlrp_lab.lib.layout import RunLayout
from hlrp_lab.lib.logger import setup_logger
from hlrp_lab.spec.check import check_spec
from hlrp_lab.spec.search_space import SearchKey, trial_spec


def run_trial(config: dict[str, Any], spec: dict, keys: list[SearchKey], lab_dir: str) -> None:
    """Tune's trainable: train the sampled spec as a Trial, reporting each evaluation's mean over sessions.

    The last evaluation is reported once the trial has written its files, so that a stop decision at
    ``max_t`` cannot cut them short. Runs in ``lab_dir`` so that the spec's relative paths hold.
    """
    os.chdir(lab_dir)
    context = tune.get_context()
    layout = RunLayout.of(spec)
    index = layout.trial_of(context.get_trial_name())  # the search names each trial by its stem
    trial = check_spec(trial_spec(spec, keys, config, index)[0])
    setup_logger(layout.log_file(index))
    max_step = trial["train"]["max_step"]

    def report(step: int, row: dict[str, float]) -> None:
        if step < max_step:
            tune.report(row)

    cpus = int(context.get_trial_resources().required_resources.get("CPU", 1))
    tune.report(Trial(trial, cpus=max(1, cpus)).run(on_eval=report)["mean"])


class TrialLog(tune.Callback):
    """On the driver: logs each trial's start and end, and remembers the trials that ended (completed or
    stopped by the scheduler, as opposed to failed or cut off by Ctrl-C)."""

    def __init__(self, keys: list[SearchKey], metric: str):
        self.keys = keys
        self.metric = metric
        self.ended: set[str] = set()

    def on_trial_start(self, iteration: int, trials: list, trial: TuneTrial, **info) -> None:
        values = {key.path: key.decode(trial.config[key.path]) for key in self.keys}
        logger.info(f"{trial.custom_trial_name} started: {values}")

    def on_trial_complete(self, iteration: int, trials: list, trial: TuneTrial, **info) -> None:
        self.ended.add(trial.custom_trial_name)
        result = {k: trial.last_result.get(k) for k in ("step", self.metric)}
        logger.info(f"{trial.custom_trial_name} ended: {format_metrics(result)}")

    def on_trial_error(self, iteration: int, trials: list, trial: TuneTrial, **info) -> None:
        logger.warning(f"{trial.custom_trial_name} failed; the search goes on")
