"""Session (one seed) and Trial (sessions of one spec, aggregated); a search's trials are in experiment.py.

In a distributed run every rank runs the trial's sessions one after another, each on all ranks; rank 0 alone
writes the files they share, and each rank logs to its own file.
"""

import contextlib
import os
import queue
import random
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context

import numpy as np
import pandas as pd
import pydash
import torch
from loguru import logger

from hlrp_lab.experiment.analysis import aggregate_sessions, save_session_graphs, save_trial_graphs
from hlrp_lab.experiment.checkpoint import Checkpoints
from hlrp_lab.experiment.loop import EvalCallback, Loop, evaluate_stage, format_metrics
from hlrp_lab.experiment.pictures import Pictures
from hlrp_lab.experiment.profile import StepProfile
from hlrp_lab.experiment.trackers import Trackers, open_trackers
from hlrp_lab.lib import stop
from hlrp_lab.lib.cpus import available_cpus
from hlrp_lab.lib.device import pick_device
from hlrp_lab.lib.distributed import barrier
from hlrp_lab.lib.layout import RunLayout
from hlrp_lab.lib.logger import setup_logger
from hlrp_lab.lib.runs import write_spec
from hlrp_lab.lib.util import atomic_write, write_json
from hlrp_lab.lib.world import World
from hlrp_lab.stages import STAGES
from hlrp_lab.stages.base import Stage

SessionEval = Callable[[int, int, dict[str, float]], None]  # (session, step, evaluation row)


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
        self.layout = RunLayout.of(spec)
        self.trial, self.session = spec["meta"]["trial"], spec["meta"]["session"]
        self.stem = self.layout.stem(self.trial, self.session)
        self.stage_cls = STAGES.get(spec["stage"], "stage")
        self.checkpoints = Checkpoints(self.layout.model, self.stem)

    def build_stage(self):
        seed = session_seed(self.spec)
        seed_everything(seed)
        return self.stage_cls(self.spec, pick_device(self.spec["train"]["device"]), seed)

    def run(self) -> dict[str, float]:
        world = World.current()
        log_file = self.layout.log_file(self.trial, self.session, world.rank if world.distributed else None)
        sink = logger.add(log_file, level=os.environ.get("LOG_LEVEL", "INFO"))
        trackers = profile = metrics = loop = None
        try:
            stage = self.build_stage()
            trackers = open_trackers(self.spec, self.layout, self.trial, self.session) if world.main else None
            profile = self.step_profile(stage)
            callbacks = [] if self.on_eval is None else [partial(self.on_eval, self.session)]
            pictures = Pictures(self.layout, self.trial, self.session)
            loop = Loop(stage, self.spec, self.checkpoints, callbacks, pictures, trackers, profile)
            metrics = loop.run()
            if world.main:
                self.save_history(pd.DataFrame(loop.history))
            logger.info(f"{self.stem} done: {format_metrics(metrics)}")
            return metrics
        finally:
            if metrics is None and loop is not None and world.main:
                self.save_partial_history(loop.history)
            self.finish(profile, trackers, metrics)
            logger.remove(sink)

    def finish(self, profile: StepProfile | None, trackers: Trackers | None, metrics: dict | None) -> None:
        """Close the profiler (its table in the log) and the trackers, after a failure too (whose error stays
        the one reported)."""
        try:
            summary = profile.close() if profile else None
            if summary:
                logger.info(f"profile of {summary}")
        except Exception as error:  # noqa: BLE001 (the run's own outcome comes first)
            logger.warning(f"{self.stem}: the profile was not written: {error}")
        if trackers:
            trackers.close(metrics)

    def step_profile(self, stage: Stage) -> StepProfile:
        """The step profiler of ``meta.profile``, on rank 0 (disabled elsewhere)."""
        enabled = self.spec["meta"]["profile"] and World.current().main
        folder = self.layout.profile(self.trial, self.session)
        table = self.layout.profile_table(self.trial, self.session)
        device = next(stage.model.parameters()).device
        return StepProfile(enabled, folder, table, device, self.stem)

    def save_partial_history(self, history: list[dict[str, float]]) -> None:
        """The rows a failed or stopped session logged (its report shows them); the session's own error stays
        the one reported."""
        if not history:
            return
        try:
            self.save_history(pd.DataFrame(history))
        except Exception as error:  # noqa: BLE001
            logger.warning(f"{self.stem}: its metrics so far were not written: {error}")

    def save_history(self, history: pd.DataFrame) -> None:
        metrics_csv = self.layout.session_metrics(self.trial, self.session)
        atomic_write(metrics_csv, lambda file: history.to_csv(file, index=False))
        graphs = self.stage_cls.Config.graph_metrics
        save_session_graphs(history, graphs, self.layout, self.trial, self.session)

    def evaluate(self, tag: str = "best") -> dict[str, float]:
        """Load the `tag` checkpoint and evaluate it only."""
        stage = self.build_stage()
        state = self.checkpoints.load(tag, stage.model)
        precision = self.spec["train"]["precision"]
        metrics = {"step": float(state["step"]), **evaluate_stage(stage, precision)}
        if self.spec["train"]["pictures"]:
            pictures = Pictures(self.layout, self.trial, self.session)
            evaluate_stage(stage, precision, partial(pictures.draw_as, stage, state["step"], "eval"))
        logger.info(f"{self.stem} {tag} checkpoint (step {state['step']}): {format_metrics(metrics)}")
        return metrics


def run_session(spec: dict, threads: int, on_eval: SessionEval | None = None) -> dict[str, float]:
    """Train one session, in this process or a spawned one, with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    stop.listen()  # a spawned session hears a stop request itself (Slurm signals every process of a job)
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
        self.layout = RunLayout.of(spec)
        self.trial = spec["meta"]["trial"]
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
        main = World.current().main
        if main:
            write_spec(self.layout.trial_spec(self.trial), self.layout.spec_name, self.spec)
            self.stage_cls.prepare(self.spec)
        barrier()  # the trial's own files (its tokenizer) are there for every rank
        means = None if on_eval is None else EvalMeans(self.spec["meta"]["max_session"], on_eval)
        results = self.map_sessions(run_session, means)
        stage = self.stage_cls.Config
        trial_metrics = {
            "metric": stage.metric,
            "metric_mode": stage.metric_mode,
            **aggregate_sessions(results),
        }
        if main:
            write_json(self.layout.trial_metrics(self.trial), trial_metrics)
            save_trial_graphs(self.layout, self.trial, stage.graph_metrics)
        logger.info(f"trial_metrics: {format_metrics(trial_metrics['mean'])}")
        logger.info(f"Trial {self.trial} done: {self.layout.run_dir}")
        return trial_metrics

    def evaluate(self) -> dict:
        """Evaluate each session's best checkpoint; write the trial's ``RunLayout.eval_metrics``."""
        results = self.map_sessions(evaluate_session)
        eval_metrics = aggregate_sessions(results)
        write_json(self.layout.eval_metrics(self.trial), eval_metrics)
        logger.info(f"eval_metrics: {format_metrics(eval_metrics['mean'])}")
        return eval_metrics

    def map_sessions(
        self, fn: Callable[..., dict[str, float]], on_eval: SessionEval | None = None
    ) -> list[dict[str, float]]:
        """Run ``fn`` on every session spec: inline for one, in parallel spawned processes for more; one after
        another on every rank of a distributed run (each session uses all ranks).

        With ``on_eval``, ``fn`` gets it as a keyword; calls from spawned sessions are relayed to this process.
        """
        specs = self.session_specs()
        kwargs = {} if on_eval is None else {"on_eval": on_eval}
        world = World.current()
        if world.distributed:
            threads = max(1, self.cpus // world.local_size)
            return [fn(spec, threads=threads, **kwargs) for spec in specs]
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
