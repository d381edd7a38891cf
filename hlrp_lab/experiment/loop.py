"""The stage-agnostic training loop: steps, logging, evaluation, checkpoints, resume; on one process or on
every rank of a distributed session (``distributed.Runner``: DDP or FSDP), where logged values are averaged
over ranks and rank 0 alone writes the files every rank shares."""

import contextlib
import math
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch
from loguru import logger
from torch.distributed.tensor import DTensor
from tqdm import tqdm

from hlrp_lab.experiment.checkpoint import Checkpoints, ShardedLast
from hlrp_lab.experiment.distributed import Runner, full_weights
from hlrp_lab.experiment.optim import build_optimizer, build_scheduler
from hlrp_lab.experiment.pictures import Pictures
from hlrp_lab.experiment.profile import StepProfile
from hlrp_lab.experiment.trackers import Trackers
from hlrp_lab.lib import stop
from hlrp_lab.lib.distributed import any_over_ranks, barrier, first_over_ranks, mean_over_ranks
from hlrp_lab.lib.errors import Interrupted, NonFiniteLossError
from hlrp_lab.lib.weights import base_of, check_base, kept_weights, reloadable_weights
from hlrp_lab.lib.world import World
from hlrp_lab.stages.base import Stage

EvalCallback = Callable[[int, dict[str, float]], None]
T = TypeVar("T")


class Loop:
    """Train ``stage`` for ``train.max_step`` optimizer steps; resume from the `last` checkpoint if any.

    On rank 0, after each evaluation ``pictures`` draws the stage's pictures and ``on_eval`` callbacks hear the
    row; ``trackers`` hear every logged row. ``profile`` times each phase of a step (``--profile``)."""

    def __init__(
        self,
        stage: Stage,
        spec: dict,
        checkpoints: Checkpoints,
        on_eval: list[EvalCallback] | None = None,
        pictures: Pictures | None = None,
        trackers: Trackers | None = None,
        profile: StepProfile | None = None,
    ):
        self.stage = stage
        self.train = spec["train"]
        self.checkpoints = checkpoints
        self.world = World.current()
        self.on_eval = (on_eval or []) if self.world.main else []
        self.pictures = pictures if self.world.main and self.train["pictures"] else None
        self.trackers = trackers if self.world.main else None
        self.profile = profile
        self.device = next(stage.model.parameters()).device  # before FSDP may offload parameters to the CPU
        self.runner = Runner(stage, spec, self.world)
        self.omitted = reloadable_weights(stage.model)  # a LoRA model's base: checkpoints leave it out
        self.base = base_of(stage.model)
        shards_omit = {f"model.{name}" for name in self.omitted}  # as get_state_dict names them (StageSteps)
        self.sharded_last = ShardedLast(checkpoints, shards_omit) if stage.Config.shardable else None
        self.params = self.runner.parameters()
        self.optimizer = build_optimizer(self.params, spec["optim"])
        self.scheduler = build_scheduler(self.optimizer, spec["optim"], self.train["max_step"])
        self.step = 0
        self.saved_step: int | None = None  # of the `last` checkpoint on disk
        self.best: float | None = None
        self.history: list[dict[str, float]] = []
        self.train_time = 0.0
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self.sums: dict[str, torch.Tensor] = {}
        self.window_steps = 0

    def run(self) -> dict[str, float]:
        """Train to max_step and return the final metrics (last evaluation plus run statistics)."""
        if self.world.main:
            (self.sharded_last or self.checkpoints).recover()
        barrier()
        if self.sharded_last.written() if self.sharded_last else self.checkpoints.written("last"):
            self.restore()
        if self.trackers:
            self.trackers.start(self.step)
        max_step = self.train["max_step"]
        self.stage.model.train()
        progress = tqdm(
            total=max_step,
            initial=self.step,
            desc=self.checkpoints.prefix,
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0,
            disable=not self.world.main,
        )
        with progress:
            while self.step < max_step:
                started = time.perf_counter()
                self.optimizer_step()
                self.train_time += time.perf_counter() - started
                if self.profile:
                    self.profile.step_done(self.step)
                progress.update(1)
                self.after_step(progress)
                if any_over_ranks(stop.requested()) and self.step < max_step:
                    self.stop_for_requeue()
        return self.final_metrics()

    def stop_for_requeue(self) -> None:
        """A stop request (lib.stop): write `last` at this step on every rank, then stop the run."""
        self.train_row()  # raises if a step since the last row had a non-finite loss: no checkpoint of that
        if self.saved_step != self.step:
            self.save_last()
        barrier()  # no rank exits (and makes torchrun stop the others) while rank 0 still writes `last`
        raise Interrupted(
            f"{self.checkpoints.prefix} at step {self.step} of {self.train['max_step']} on "
            f"{stop.STOP_SIGNAL.name}, its `last` checkpoint written; resume with "
            f"train@{self.checkpoints.model_dir.parent}"
        )

    def optimizer_step(self) -> None:
        accum = self.train["grad_accum"]
        for micro in range(accum):
            with self.phase("data"):
                batch = self.stage.train_batch(self.step * accum + micro)
            with self.phase("compute"), self.runner.gradient_sync(micro == accum - 1):
                with autocast(self.train["precision"], self.device):
                    loss, logs = self.runner(batch)
                (loss / accum).backward()
            self.accumulate({"loss": loss.detach(), **logs}, weight=1 / accum)
        with self.phase("compute"):
            self.update_weights()

    def update_weights(self) -> None:
        if self.train["grad_clip"] is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.train["grad_clip"])
            if isinstance(grad_norm, DTensor):  # FSDP: the norm over every rank's shards
                grad_norm = grad_norm.full_tensor()
            self.accumulate({"grad_norm": grad_norm.detach()}, weight=1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.window_steps += 1
        finite = torch.isfinite(self.sums["loss"])
        self.first_bad_step = torch.where(~finite & (self.first_bad_step < 0), self.step, self.first_bad_step)

    def phase(self, name: str) -> contextlib.AbstractContextManager:
        """Time ``name`` (data, compute, eval, checkpoint, pictures, log) when profiling."""
        return self.profile.phase(name) if self.profile else contextlib.nullcontext()

    def accumulate(self, logs: dict[str, torch.Tensor], weight: float) -> None:
        """Sum scalars on the device; they are read (one sync) only when a row is logged."""
        for key, value in logs.items():
            value = value.float() * weight
            self.sums[key] = self.sums[key] + value if key in self.sums else value

    def after_step(self, progress: tqdm) -> None:
        step, max_step = self.step, self.train["max_step"]
        do_log = step % self.train["log_frequency"] == 0 or step == max_step
        do_eval = step % self.train["eval_frequency"] == 0 or step == max_step
        if not (do_log or do_eval):
            return
        with self.phase("log"):
            row = self.train_row()
        if do_eval:
            with self.phase("eval"):
                row.update(self.evaluate())
        self.history.append(row)
        progress.set_postfix(
            loss=f"{row['loss']:.4g}", steps_per_s=f"{row['steps_per_s']:.1f}", refresh=False
        )
        pictures = []
        if do_eval:
            with self.phase("checkpoint"):
                best = self.save_checkpoints(row)
            if self.pictures:
                with self.phase("pictures"):
                    pictures = self.draw(best)
            logger.info(f"{self.checkpoints.prefix} step {step}: {format_metrics(row)}")
            for callback in self.on_eval:
                callback(step, row)
        if self.trackers:
            with self.phase("log"):
                self.trackers.log(step, row, pictures)

    def draw(self, best: bool) -> list[Path]:
        """The stage's pictures of this evaluation (rank 0), as ``evaluate()`` leaves the model."""
        draw = partial(self.pictures.draw, self.stage, self.step, best)
        paths = evaluate_stage(self.stage, self.train["precision"], draw)
        self.stage.model.train()
        return paths

    def train_row(self) -> dict[str, float]:
        """Mean training scalars since the last row, over steps and ranks; raises on every rank if any step of
        any rank in the window had a non-finite loss."""
        bad = first_over_ranks(int(self.first_bad_step.item()))
        if bad >= 0:
            raise NonFiniteLossError(
                f"{self.checkpoints.prefix}: loss is not finite at step {bad}; {self.kept()}"
            )
        row = {"step": float(self.step), "lr": self.scheduler.get_last_lr()[0]}
        row.update(mean_over_ranks({k: v / self.window_steps for k, v in self.sums.items()}))
        row["steps_per_s"] = self.step / self.train_time if self.train_time > 0 else 0.0
        self.sums, self.window_steps = {}, 0
        return row

    def evaluate(self) -> dict[str, float]:
        """The stage's held-out metrics, through the runner (every rank evaluates; FSDP needs them all),
        averaged over ranks."""
        metrics = evaluate_stage(self.stage, self.train["precision"], lambda: self.runner(None))
        self.stage.model.train()
        return mean_over_ranks(metrics)

    def improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.stage.Config.metric_mode == "max" else value < self.best

    def save_checkpoints(self, row: dict[str, float]) -> bool:
        """Write `last`, and `best` if the metric improved; whether it did."""
        value = row[self.stage.Config.metric]
        improved = self.improved(value)
        if improved:
            self.best = value
            self.save_best({"step": self.step, "metrics": row})
        self.save_last()
        return improved

    def save_last(self) -> None:
        if self.sharded_last:
            self.sharded_last.save(self.runner.module, self.optimizer, self.training_state())
        elif self.world.main:  # DDP replicas hold the same weights and optimizer state
            state = {**self.training_state(), "optimizer": self.optimizer.state_dict()}
            self.checkpoints.save("last", kept_weights(self.stage.model, self.omitted), state)
        self.saved_step = self.step

    def save_best(self, state: dict[str, Any]) -> None:
        """`best` as one safetensors file, written by rank 0 (FSDP's shards gathered to it first)."""
        state = {**state, "base": self.base}
        if not self.runner.sharded:
            if self.world.main:
                self.checkpoints.save("best", kept_weights(self.stage.model, self.omitted), state)
            return
        weights = full_weights(self.runner.module, self.stage.model, self.omitted)  # a collective
        if self.world.main:
            self.checkpoints.save("best", weights, state)

    def kept(self) -> str:
        """Which checkpoint a failed run leaves to resume from."""
        if self.saved_step is None:
            return f"no checkpoint was written yet (the first is at step {self.train['eval_frequency']})"
        return f"the last good checkpoint is {self.checkpoints.weights_path('last')} (step {self.saved_step})"

    def training_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "best": self.best,
            "history": self.history,
            "train_time": self.train_time,
            "scheduler": self.scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "base": self.base,
        }

    def restore(self) -> None:
        if self.sharded_last:
            state = self.sharded_last.load(self.runner.module, self.optimizer)
            if self.omitted:
                check_base(self.stage.model, state.get("base", {}), self.checkpoints.state_path("last"))
        else:
            state = self.checkpoints.load("last", self.stage.model)
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] is not None and len(state["rng_cuda"]) and self.device.type == "cuda":
            # this device's (every rank's is rank 0's); a list: an older run, per device
            cuda = state["rng_cuda"]
            torch.cuda.set_rng_state(cuda[0] if isinstance(cuda, list) else cuda, self.device)
        self.step, self.best = state["step"], state["best"]
        self.saved_step = self.step
        self.history, self.train_time = state["history"], state["train_time"]
        logger.info(f"{self.checkpoints.prefix}: resumed from step {self.step} on {self.world.size} rank(s)")

    def final_metrics(self) -> dict[str, float]:
        last_eval = next(row for row in reversed(self.history) if self.stage.Config.metric in row)
        return {**last_eval, "best": self.best, "train_time": self.train_time}


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``train.precision`` bf16, or auto on CUDA; nothing otherwise."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluate_stage(stage: Stage, precision: str, evaluate: Callable[[], T] | None = None) -> T:
    """``stage.evaluate()`` (or ``evaluate()``: the same through a distributed runner, or the stage's pictures)
    with the stage's model in eval mode, without gradients, under the training precision."""
    stage.model.eval()
    with torch.no_grad(), autocast(precision, next(stage.model.parameters()).device):
        return (evaluate or stage.evaluate)()


def format_metrics(metrics: dict[str, Any]) -> str:
    """SLM-Lab style ``key:value | key:value``."""
    return " | ".join(f"{k}:{v:.4g}" if isinstance(v, float) else f"{k}:{v}" for k, v in metrics.items())
