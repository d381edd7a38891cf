"""Session (one seed), Trial (sessions of one spec, aggregated) and Experiment (trials of a search)."""

import contextlib
import os
import queue
import random
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import pydash
import torch
from loguru import logger

from hlrp_lab.experiment.analysis import (
    aggregate_sessions,
    save_experiment_graphs,
    save_session_graphs,
    save_trial_graphs,
)
from hlrp_lab.experiment.checkpoint import Checkpoints
from hlrp_lab.experiment.loop import EvalCallback, Loop, evaluate_stage, format_metrics
from hlrp_lab.experiment.results import (
    COMPLETED,
    ENDED,
    TrialRecord,
    experiment_table,
    keep_models,
    save_table,
)
from hlrp_lab.lib.cpus import available_cpus
from hlrp_lab.lib.device import pick_device
from hlrp_lab.lib.errors import RunError
from hlrp_lab.lib.logger import setup_logger
from hlrp_lab.lib.runs import experiment_table_path, write_spec
from hlrp_lab.lib.util import atomic_write, write_json
from hlrp_lab.spec.check import check_spec
from hlrp_lab.stages import STAGES

SessionEval = Callable[[int, int, dict[str, float]], None]  # (session, step, evaluation row)


def prefix(spec: dict, with_session: bool = True) -> str:
    """``{spec_name}_t{trial}`` or ``{spec_name}_t{trial}_s{session}``: the name stem of a run's files."""
    meta = spec["meta"]
    stem = f"{meta['spec_name']}_t{meta['trial']}"
    return f"{stem}_s{meta['session']}" if with_session else stem


def session_seed(spec: dict) -> int:
    meta = spec["meta"]
    return meta["random_seed"] + 1000 * meta["trial"] + meta["session"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Session:
    """One seed: build the stage, run the loop, write the session's metrics and graphs.

    ``on_eval(session, step, row)`` is called after every evaluation.
    """

    def __init__(self, spec: dict, on_eval: SessionEval | None = None):
        self.spec = spec
        self.on_eval = on_eval
        self.run_dir = Path(spec["meta"]["run_dir"])
        self.prefix = prefix(spec)
        self.stage_cls = STAGES.get(spec["stage"], "stage")
        self.checkpoints = Checkpoints(self.run_dir / "model", self.prefix)

    def build_stage(self):
        seed = session_seed(self.spec)
        seed_everything(seed)
        return self.stage_cls(self.spec, pick_device(self.spec["train"]["device"]), seed)

    def run(self) -> dict[str, float]:
        sink = logger.add(
            self.run_dir / "log" / f"{self.prefix}.log", level=os.environ.get("LOG_LEVEL", "INFO")
        )
        try:
            callbacks = [] if self.on_eval is None else [partial(self.on_eval, self.spec["meta"]["session"])]
            loop = Loop(self.build_stage(), self.spec, self.checkpoints, on_eval=callbacks)
            metrics = loop.run()
            history = pd.DataFrame(loop.history)
            metrics_csv = self.run_dir / "info" / f"{self.prefix}_session_metrics.csv"
            atomic_write(metrics_csv, lambda file: history.to_csv(file, index=False))
            save_session_graphs(history, self.stage_cls.graph_metrics, self.run_dir / "graph", self.prefix)
            logger.info(f"{self.prefix} done: {format_metrics(metrics)}")
            return metrics
        finally:
            logger.remove(sink)

    def evaluate(self, tag: str = "best") -> dict[str, float]:
        """Load the `tag` checkpoint and evaluate it only."""
        stage = self.build_stage()
        state = self.checkpoints.load(tag, stage.model)
        metrics = {"step": float(state["step"]), **evaluate_stage(stage, self.spec["train"]["precision"])}
        logger.info(f"{self.prefix} {tag} checkpoint (step {state['step']}): {format_metrics(metrics)}")
        return metrics


def run_session(spec: dict, threads: int, on_eval: SessionEval | None = None) -> dict[str, float]:
    """Train one session, in this process or a spawned one, with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    return Session(spec, on_eval).run()


def evaluate_session(spec: dict, threads: int) -> dict[str, float]:
    """Evaluate one session's best checkpoint, like ``run_session``."""
    torch.set_num_threads(threads)
    return Session(spec).evaluate()


class EvalMeans:
    """Collects the sessions' evaluation rows; calls ``on_eval(step, mean row)`` once all have that step."""

    def __init__(self, sessions: int, on_eval: EvalCallback):
        self.sessions = sessions
        self.on_eval = on_eval
        self.rows: dict[int, dict[int, dict[str, float]]] = {}

    def __call__(self, session: int, step: int, row: dict[str, float]) -> None:
        rows = self.rows.setdefault(step, {})
        rows[session] = row
        if len(rows) == self.sessions:
            del self.rows[step]
            self.on_eval(step, aggregate_sessions(list(rows.values()))["mean"])


def put_row(rows: queue.Queue, session: int, step: int, row: dict[str, float]) -> None:
    rows.put((session, step, row))


def relay_rows(rows: queue.Queue, futures: list[Future], on_eval: SessionEval) -> None:
    """Pass what spawned sessions put on ``rows`` to ``on_eval`` (in this process) until all have ended."""
    while not all(future.done() for future in futures) or not rows.empty():
        with contextlib.suppress(queue.Empty):
            on_eval(*rows.get(timeout=0.1))


class Trial:
    """``meta.max_session`` sessions of one spec with distinct seeds, aggregated as mean and std.

    Sessions share ``cpus`` (default: the CPUs this process may use, by affinity and cgroup quota, not the
    machine's count: more torch threads than cores multiplies the CPU time of a step on a busy machine).
    """

    def __init__(self, spec: dict, cpus: int | None = None):
        self.spec = spec
        self.run_dir = Path(spec["meta"]["run_dir"])
        self.prefix = prefix(spec, with_session=False)
        self.stage_cls = STAGES.get(spec["stage"], "stage")
        self.cpus = cpus or available_cpus()

    def session_specs(self) -> list[dict]:
        specs = []
        for session in range(self.spec["meta"]["max_session"]):
            spec = pydash.clone_deep(self.spec)
            spec["meta"]["session"] = session
            specs.append(spec)
        return specs

    def run(self, on_eval: EvalCallback | None = None) -> dict:
        """Train every session; write the trial metrics and graphs; return the aggregate.

        ``on_eval(step, row)`` hears the mean over sessions of every evaluation, in this process.
        """
        write_spec(
            self.run_dir / "info" / f"{self.prefix}_spec.json", self.spec["meta"]["spec_name"], self.spec
        )
        self.stage_cls.prepare(self.spec)
        means = None if on_eval is None else EvalMeans(self.spec["meta"]["max_session"], on_eval)
        results = self.map_sessions(run_session, means)
        stage = self.stage_cls
        trial_metrics = {
            "metric": stage.metric,
            "metric_mode": stage.metric_mode,
            **aggregate_sessions(results),
        }
        write_json(self.run_dir / "info" / f"{self.prefix}_trial_metrics.json", trial_metrics)
        save_trial_graphs(self.run_dir, self.prefix, self.stage_cls.graph_metrics)
        logger.info(f"trial_metrics: {format_metrics(trial_metrics['mean'])}")
        logger.info(f"Trial {self.spec['meta']['trial']} done: {self.run_dir}")
        return trial_metrics

    def evaluate(self) -> dict:
        """Evaluate each session's best checkpoint; write ``{prefix}_eval_metrics.json``."""
        results = self.map_sessions(evaluate_session)
        eval_metrics = aggregate_sessions(results)
        write_json(self.run_dir / "info" / f"{self.prefix}_eval_metrics.json", eval_metrics)
        logger.info(f"eval_metrics: {format_metrics(eval_metrics['mean'])}")
        return eval_metrics

    def map_sessions(
        self, fn: Callable[..., dict[str, float]], on_eval: SessionEval | None = None
    ) -> list[dict[str, float]]:
        """Run ``fn`` on every session spec: inline for one, in parallel spawned processes for more.

        With ``on_eval``, ``fn`` gets it as a keyword; calls from spawned sessions are relayed to this process.
        """
        specs = self.session_specs()
        kwargs = {} if on_eval is None else {"on_eval": on_eval}
        workers = min(len(specs), self.cpus)
        threads = max(1, self.cpus // workers)
        if len(specs) == 1:
            return [fn(specs[0], threads=threads, **kwargs)]
        context = get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=setup_logger) as pool:
            if on_eval is None:
                return list(pool.map(partial(fn, threads=threads), specs))
            with context.Manager() as manager:
                rows = manager.Queue()
                relay = partial(put_row, rows)
                futures = [pool.submit(fn, spec, threads=threads, on_eval=relay) for spec in specs]
                relay_rows(rows, futures, on_eval)
                return [future.result() for future in futures]


class Experiment:
    """Trials of one spec in one run directory, tabulated one row per trial in ``info/{spec}_experiment.*``.

    ``search`` samples the trials from the spec's ``search`` block with Ray Tune; ``run`` trains given specs.
    """

    def __init__(self, spec: dict):
        self.spec = spec
        self.run_dir = Path(spec["meta"]["run_dir"])
        self.spec_name = spec["meta"]["spec_name"]
        self.stage_cls = STAGES.get(spec["stage"], "stage")

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
        from hlrp_lab.experiment.search import run_search

        outcome = run_search(self.spec)
        table = self.tabulate(outcome.records, outcome.params)
        ranked = table.dropna(subset=[self.stage_cls.metric])
        if not ranked.empty:
            self.save_best_spec(next(r for r in outcome.records if r.trial == ranked["trial"].iloc[0]))
        graph_dir = self.run_dir / "graph"
        save_experiment_graphs(
            table, outcome.params, self.stage_cls.metric, graph_dir, self.spec_name, outcome.log_params
        )
        keep_models(self.run_dir / "model", self.spec_name, ranked["trial"].tolist(), table["trial"], keep)
        logger.info(f"{self.spec_name} search: {len(table)} trials\n{table.head(10).to_string(index=False)}")
        if outcome.interrupted:
            ended = int(table["status"].isin(ENDED).sum())
            raise RunError(
                f"search interrupted: {ended} of the {len(table)} trials started had ended; "
                f"the table of what ran: {experiment_table_path(self.run_dir, self.spec_name)}"
            )
        if ranked.empty:
            raise RunError(f"every trial failed; see {experiment_table_path(self.run_dir, self.spec_name)}")
        return table

    def tabulate(self, records: list[TrialRecord], params: list[str]) -> pd.DataFrame:
        metric, mode = self.stage_cls.metric, self.stage_cls.metric_mode
        table = experiment_table(records, metric, mode, params, self.stage_cls.graph_metrics)
        save_table(table, experiment_table_path(self.run_dir, self.spec_name).with_suffix(""))
        return table

    def save_best_spec(self, record: TrialRecord) -> None:
        """The best trial as a spec of its own: trial 0 with the same session seeds, no search block."""
        spec = check_spec(record.spec)
        spec["meta"].update(trial=0, random_seed=spec["meta"]["random_seed"] + 1000 * record.trial)
        write_spec(self.run_dir / "info" / f"{self.spec_name}_best_spec.json", self.spec_name, spec)
        logger.info(
            f"best trial: {record.trial} ({self.stage_cls.metric} {record.metrics[self.stage_cls.metric]:.4g})"
        )
