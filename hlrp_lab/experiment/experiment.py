"""Experiment: the trials of one spec in one run directory (a search's, or given specs), one row per trial."""

import pandas as pd
import pydash
from loguru import logger

from hlrp_lab.experiment.analysis import save_experiment_graphs
from hlrp_lab.experiment.control import Trial
from hlrp_lab.experiment.results import (
    COMPLETED,
    ENDED,
    TrialRecord,
    experiment_table,
    keep_models,
    save_table,
)
from hlrp_lab.experiment.search import run_search, search_target
from hlrp_lab.lib.errors import RunError
from hlrp_lab.lib.layout import RunLayout
from hlrp_lab.lib.runs import write_spec
from hlrp_lab.spec.check import check_spec
from hlrp_lab.stages import STAGES


class Experiment:
    """Trials of one spec in one run directory, tabulated one row per trial (``RunLayout.experiment_table``).

    ``search`` samples the trials from the spec's ``search`` block with Ray Tune; ``run`` trains given specs.
    """

    def __init__(self, spec: dict):
        self.spec = spec
        self.layout = RunLayout.of(spec)
        self.spec_name = self.layout.spec_name
        self.stage = STAGES.config_class(spec["stage"], "stage")
        self.metric, self.mode = search_target(spec)  # meta.search_metric, else the stage's metric

    def run(self, trial_specs: list[dict]) -> pd.DataFrame:
        """Train ``trial_specs`` one after the other as trials 0, 1, ..."""
        records = []
        for trial, spec in enumerate(trial_specs):
            spec = pydash.clone_deep(spec)
            spec["meta"]["trial"] = trial
            records.append(TrialRecord(trial, COMPLETED, Trial(spec).run()["mean"], spec))
        return self.tabulate(records, [])

    def search(self, keep: int = 3) -> pd.DataFrame:
        """Run the search; write the table, the best spec and the graphs; keep the best ``keep`` trials'
        model files (-1: all). Raises RunError, after writing them, if the search was interrupted. The data is
        prepared by the caller (the lab), once, before the trials start."""
        outcome = run_search(self.spec)
        table = self.tabulate(outcome.records, outcome.params)
        ranked = table.dropna(subset=[self.metric])
        if not ranked.empty:
            self.save_best_spec(next(r for r in outcome.records if r.trial == ranked["trial"].iloc[0]))
        save_experiment_graphs(table, outcome.params, self.metric, self.layout, outcome.log_params)
        keep_models(self.layout.model, self.spec_name, ranked["trial"].tolist(), table["trial"], keep)
        logger.info(f"{self.spec_name} search: {len(table)} trials\n{table.head(10).to_string(index=False)}")
        if outcome.interrupted:
            ended = int(table["status"].isin(ENDED).sum())
            raise RunError(
                f"search interrupted: {ended} of the {len(table)} trials started had ended; "
                f"the table of what ran: {self.layout.experiment_table}"
            )
        if ranked.empty:
            raise RunError(f"every trial failed; see {self.layout.experiment_table}")
        return table

    def tabulate(self, records: list[TrialRecord], params: list[str]) -> pd.DataFrame:
        table = experiment_table(records, self.metric, self.mode, params, self.stage.graph_metrics)
        save_table(table, self.layout.experiment_table.with_suffix(""))
        return table

    def save_best_spec(self, record: TrialRecord) -> None:
        """The best trial as a spec of its own: trial 0 with the same session seeds, no search block."""
        spec = check_spec(record.spec)
        spec["meta"].update(trial=0, random_seed=spec["meta"]["random_seed"] + 1000 * record.trial)
        write_spec(self.layout.best_spec, self.spec_name, spec)
        logger.info(f"best trial: {record.trial} ({self.metric} {record.metrics[self.metric]:.4g})")
