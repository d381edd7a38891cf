"""``--profile``: a torch.profiler trace of a window of steps, the time of each phase of a step (data, compute)
and of the work done now and then (eval, checkpoint, pictures, log), with CPU, memory and GPU use; summarised
in one table whose last line says whether the model waits on data (docs/PROFILING.md)."""

import contextlib
import csv
import io
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import psutil
import torch

from hlrp_lab.lib.util import atomic_write_text, write_temp

STEP_PHASES = ("data", "compute")  # in every step; any other phase (eval, checkpoint, ...) comes now and then
PERIODIC_ORDER = ("eval", "checkpoint", "pictures", "log", "profiler")  # profiler: its own cost
WAIT, WARMUP, ACTIVE = 2, 1, 3  # the trace leaves out WAIT steps (start-up) and WARMUP steps, records ACTIVE
SAMPLE_EVERY = 10  # steps between two samples of CPU, memory and GPU use
DATA_STALL = 0.3  # a data share of the step above this is a stall
MIB = 2**20
NO_PHASE = contextlib.nullcontext()
PERFETTO = "https://ui.perfetto.dev"


class StepProfile:
    """Times the phases of each training step (``phase``), samples resources after each step (``step_done``)
    and drives a torch.profiler window; ``close`` writes the table and returns it as text. Disabled, it does
    nothing and writes nothing."""

    def __init__(self, enabled: bool, folder: Path, table: Path, device: torch.device, name: str):
        self.enabled = enabled
        self.folder, self.table, self.device, self.name = folder, table, device, name
        self.cuda = device.type == "cuda"
        if not enabled:
            return
        self.totals: dict[str, float] = defaultdict(float)  # seconds of each phase, nested phases excluded
        self.nested: list[float] = []  # per open phase: seconds of the phases opened inside it
        self.created = time.perf_counter()
        self.started: float | None = None  # the wall clock's zero: the first phase's start
        self.mark = self.created  # the end of the previous step
        self.last = self.created  # the latest moment anything was timed
        self.periodic = 0.0  # seconds of periodic phases since the previous step
        self.step_seconds = 0.0  # wall time of the steps, periodic phases left out
        self.steps = 0
        self.done: list[int] = []  # the first steps' numbers: which steps the trace holds
        self.traces: list[Path] = []
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # the first call starts the measurement
        psutil.cpu_percent(None)
        self.cpu: list[float] = []
        self.machine_cpu: list[float] = []
        self.rss_peak = 0
        self.gpu_util: list[float] = []
        self.cuda_peak = 0
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        else:  # kineto would print an ERROR line on stderr for the GPU it looks for; its errors matter on CUDA
            os.environ.setdefault("KINETO_LOG_LEVEL", "5")
        self.profiler = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=WAIT, warmup=WARMUP, active=ACTIVE, repeat=1),
            on_trace_ready=self.export,
            record_shapes=False,
        )
        self.profiler.start()
        self.closed = False

    def phase(self, name: str) -> contextlib.AbstractContextManager:
        """Time ``name`` (added up when it repeats within a step); a labelled range in the trace."""
        return self.timed(name) if self.enabled else NO_PHASE

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        with torch.profiler.record_function(name):
            self.sync()
            start = time.perf_counter()
            if self.started is None:
                self.started = self.mark = start
            self.nested.append(0.0)
            yield
            self.sync()
            end = time.perf_counter()
            elapsed = end - start
            own = elapsed - self.nested.pop()
            if self.nested:
                self.nested[-1] += elapsed
            self.totals[name] += own
            if name not in STEP_PHASES:
                self.periodic += own
            self.last = end

    def sync(self) -> None:
        """Wait for the device's queued work, so that it counts in the phase that queued it."""
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def step_done(self, step: int) -> None:
        """After optimizer step ``step``: its time, a resource sample now and then, the trace's schedule."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.started is None:  # a loop that times no phase
            self.started = self.created
        self.step_seconds += now - self.mark - self.periodic
        self.periodic = 0.0
        self.steps += 1
        if len(self.done) < WAIT + WARMUP + ACTIVE:
            self.done.append(step)
        if self.cuda:
            self.cuda_peak = max(self.cuda_peak, torch.cuda.max_memory_allocated(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.steps % SAMPLE_EVERY == 0:
            self.sample()
        self.profiler.step()  # starts, stops or writes the trace: its cost is no step's
        self.mark = self.last = time.perf_counter()
        self.totals["profiler"] += self.mark - now

    def sample(self) -> None:
        """CPU use since the previous sample, resident memory of this process and its children, GPU use."""
        self.cpu.append(self.process.cpu_percent(None))
        self.machine_cpu.append(psutil.cpu_percent(None))
        self.rss_peak = max(self.rss_peak, resident_memory(self.process))
        if self.cuda and (util := gpu_utilization(self.device)) is not None:
            self.gpu_util.append(util)

    def export(self, profiler: torch.profiler.profile) -> None:
        """The recorded window as Chrome trace JSON, named after its steps."""
        steps = self.done[WAIT + WARMUP :]
        if not steps:
            return
        path = self.folder / f"trace_steps{steps[0]}-{steps[-1]}.pt.trace.json"
        self.folder.mkdir(parents=True, exist_ok=True)
        os.replace(write_temp(path, lambda tmp: profiler.export_chrome_trace(str(tmp))), path)
        self.traces.append(path)

    def close(self) -> str | None:
        """Stop the profiler (a window still open is written as it is), write the table; the table as text."""
        if not self.enabled or self.closed:
            return None
        self.closed = True
        self.sample()
        self.profiler.stop()
        rows = self.rows()
        self.table.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.table, table_csv(rows))
        return self.summary(rows)

    def rows(self) -> list[tuple[str, float, str]]:
        """(metric, value, unit): the table's numbers."""
        steps = max(self.steps, 1)
        wall = self.last - (self.created if self.started is None else self.started)
        step_seconds = self.step_seconds
        rows = [
            ("steps", float(self.steps), "steps"),
            ("wall_time", wall, "s"),
            ("steps_per_s", ratio(self.steps, step_seconds), "1/s"),
            ("steps_per_s_overall", ratio(self.steps, wall), "1/s"),
            ("step_time", 1000 * step_seconds / steps, "ms"),
        ]
        timed = sum(self.totals.get(name, 0.0) for name in STEP_PHASES)
        per_step = {name: self.totals.get(name, 0.0) for name in STEP_PHASES}
        per_step["other"] = max(step_seconds - timed, 0.0)
        for name, seconds in per_step.items():
            rows.append((f"{name}_per_step", 1000 * seconds / steps, "ms"))
            rows.append((f"{name}_share_of_step", 100 * ratio(seconds, step_seconds), "%"))
        for name in periodic_phases(self.totals):
            rows.append((f"{name}_total", self.totals[name], "s"))
            rows.append((f"{name}_share_of_wall", 100 * ratio(self.totals[name], wall), "%"))
        rows.append(("cpu_percent", mean(self.cpu), "% of one core"))
        rows.append(("machine_cpu_percent", mean(self.machine_cpu), "% of all cores"))
        rows.append(("rss_peak", self.rss_peak / MIB, "MiB"))
        if self.cuda:
            rows.append(("cuda_memory_peak", self.cuda_peak / MIB, "MiB"))
            if self.gpu_util:
                rows.append(("gpu_utilization", mean(self.gpu_util), "%"))
        return rows

    def summary(self, rows: list[tuple[str, float, str]]) -> str:
        """The table as aligned text, the trace's path and the data verdict."""
        value = {metric: number for metric, number, _ in rows}
        head = (
            f"{self.name}: {self.steps} steps in {value['wall_time']:.1f} s, "
            f"{value['steps_per_s']:.2f} steps/s training ({value['steps_per_s_overall']:.2f} with evaluations)"
        )
        lines = [head, f"{'per step':<14}{'ms/step':>10}{'share of step':>16}"]
        for name, label in (("data", "data wait"), ("compute", "compute"), ("other", "other")):
            share = value[f"{name}_share_of_step"]
            lines.append(f"  {label:<12}{value[f'{name}_per_step']:>10.1f}{share:>15.1f}%")
        lines.append(f"  {'step':<12}{value['step_time']:>10.1f}{100.0:>15.1f}%")
        periodic = periodic_phases(self.totals)
        if periodic:
            lines.append(f"{'now and then':<14}{'total s':>10}{'share of wall':>16}")
            for name in periodic:
                share = value[f"{name}_share_of_wall"]
                lines.append(f"  {name:<12}{value[f'{name}_total']:>10.2f}{share:>15.1f}%")
        lines.append(self.resources(value))
        lines.append(self.trace_line())
        lines.append(data_verdict(value["data_share_of_step"] / 100))
        return "\n".join(lines)

    def resources(self, value: dict[str, float]) -> str:
        line = (
            f"CPU {value['cpu_percent']:.0f}% of one core (machine {value['machine_cpu_percent']:.0f}%), "
            f"RSS peak {value['rss_peak']:.0f} MiB (with child processes)"
        )
        if self.cuda:
            util = f"{value['gpu_utilization']:.0f}%" if "gpu_utilization" in value else "n/a (no NVML)"
            line += f"; CUDA memory peak {value['cuda_memory_peak']:.0f} MiB, GPU utilisation {util}"
        return line

    def trace_line(self) -> str:
        if not self.traces:
            return f"no trace: the window starts after {WAIT + WARMUP} steps and this run took {self.steps}"
        paths = ", ".join(str(path) for path in self.traces)
        return f"trace: {paths} (open in {PERFETTO} or TensorBoard)"


def periodic_phases(totals: dict[str, float]) -> list[str]:
    """The phases timed now and then, the loop's in its order, then any other by name."""
    others = sorted(name for name in totals if name not in STEP_PHASES + PERIODIC_ORDER)
    return [name for name in PERIODIC_ORDER if name in totals] + others


def data_verdict(share: float) -> str:
    """One line: does the model wait on data, and which keys to change if it does."""
    head = f"data loading takes {share:.0%} of each step"
    if share <= DATA_STALL:
        return f"{head}: the model does not wait on data"
    return (
        f"{head}: the model waits on data; raise data.num_workers (scene level: loader processes), "
        'raise data.pairs_per_scene, or use data.pairs = "pair" (pairs indexed in memory) for a small set'
    )


def table_csv(rows: list[tuple[str, float, str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["metric", "value", "unit"])
    writer.writerows((metric, f"{number:.6g}", unit) for metric, number, unit in rows)
    return out.getvalue()


def resident_memory(process: psutil.Process) -> int:
    """Bytes resident in ``process`` and its children (data loader workers), those still alive."""
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total


def gpu_utilization(device: torch.device) -> float | None:
    """The device's utilisation in percent, or None where NVML (pynvml) cannot tell."""
    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # noqa: BLE001 (no pynvml, no NVML driver, pynvml's own NVMLError: no number, no crash)
        return None


def ratio(part: float, whole: float) -> float:
    return part / whole if whole > 0 else 0.0


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
