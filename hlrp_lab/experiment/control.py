"""Session (one seed), Trial (sessions of one spec, aggregated) and Experiment (trials of a search)."""

import os
import random
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import pydash
import torch
from loguru import logger

from hlrp_lab.components.registry import STAGES
from hlrp_lab.experiment.analysis import aggregate_sessions, save_session_graphs, save_trial_graphs
from hlrp_lab.experiment.checkpoint import Checkpoints
from hlrp_lab.experiment.loop import Loop, format_metrics
from hlrp_lab.lib.logger import setup_logger
from hlrp_lab.lib.util import write_json


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


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


class Session:
    """One seed: build the stage, run the loop, write the session's metrics and graphs."""

    def __init__(self, spec: dict):
        self.spec = spec
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
            loop = Loop(self.build_stage(), self.spec, self.checkpoints)
            metrics = loop.run()
            history = pd.DataFrame(loop.history)
            history.to_csv(self.run_dir / "info" / f"{self.prefix}_session_metrics.csv", index=False)
            save_session_graphs(history, self.stage_cls.graph_metrics, self.run_dir / "graph", self.prefix)
            logger.info(f"{self.prefix} done: {format_metrics(metrics)}")
            return metrics
        finally:
            logger.remove(sink)

    def evaluate(self, tag: str = "best") -> dict[str, float]:
        """Load the `tag` checkpoint and evaluate it only."""
        stage = self.build_stage()
        state = self.checkpoints.load(tag, stage.model)
        stage.model.eval()
        with torch.no_grad():
            metrics = {"step": float(state["step"]), **stage.evaluate()}
        logger.info(f"{self.prefix} {tag} checkpoint (step {state['step']}): {format_metrics(metrics)}")
        return metrics


def run_session(spec: dict, threads: int | None = None) -> dict[str, float]:
    """Train one session, in this process or a spawned one (then with ``threads`` torch threads)."""
    if threads is not None:
        torch.set_num_threads(threads)
    return Session(spec).run()


def evaluate_session(spec: dict, threads: int | None = None) -> dict[str, float]:
    """Evaluate one session's best checkpoint, like ``run_session``."""
    if threads is not None:
        torch.set_num_threads(threads)
    return Session(spec).evaluate()


class Trial:
    """``meta.max_session`` sessions of one spec with distinct seeds, aggregated as mean and std."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.run_dir = Path(spec["meta"]["run_dir"])
        self.prefix = prefix(spec, with_session=False)
        self.stage_cls = STAGES.get(spec["stage"], "stage")

    def session_specs(self) -> list[dict]:
        specs = []
        for session in range(self.spec["meta"]["max_session"]):
            spec = pydash.clone_deep(self.spec)
            spec["meta"]["session"] = session
            specs.append(spec)
        return specs

    def run(self) -> dict:
        """Train every session; write the trial metrics and graphs; return the aggregate."""
        write_json(
            self.run_dir / "info" / f"{self.prefix}_spec.json", {self.spec["meta"]["spec_name"]: self.spec}
        )
        self.stage_cls.prepare(self.spec)
        results = self.map_sessions(run_session)
        trial_metrics = aggregate_sessions(results)
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

    def map_sessions(self, fn: Callable[..., dict[str, float]]) -> list[dict[str, float]]:
        """Run ``fn`` on every session spec: inline for one, in parallel spawned processes for more."""
        specs = self.session_specs()
        if len(specs) == 1:
            return [fn(specs[0])]
        workers = min(len(specs), os.cpu_count() or 1)
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=setup_logger) as pool:
            return list(pool.map(partial(fn, threads=threads), specs))


class Experiment:
    """Trials of one spec in one run directory, with a table of one row per trial.

    Search mode fills ``trial_specs`` from the spec's ``search`` block; a plain run has one trial.
    """

    def __init__(self, spec: dict):
        self.spec = spec
        self.run_dir = Path(spec["meta"]["run_dir"])

    def run(self, trial_specs: list[dict]) -> pd.DataFrame:
        rows = []
        for trial, spec in enumerate(trial_specs):
            spec = pydash.clone_deep(spec)
            spec["meta"]["trial"] = trial
            rows.append({"trial": trial, **Trial(spec).run()["mean"]})
        table = pd.DataFrame(rows)
        table.to_csv(self.run_dir / "info" / f"{self.spec['meta']['spec_name']}_experiment.csv", index=False)
        return table
