"""GPU training throughput of the LAQ model (``laq_full``): optimizer steps/s and model FLOPs utilisation (MFU)
in bf16, eager against ``torch.compile``, side by side in one run; then the lab's own loop through the real CLI,
on one GPU and with DDP on every GPU present. Target on an H100/H200-class GPU: MFU >= 35% compiled.

In process: ``LAQStage.build_model`` of the checked spec, on synthetic batches (random frames at the spec's
``image_size`` and ``batch_size``, made on the device before the clock starts), the lab's training step
(forward, MSE + quantizer loss, backward, gradient clipping at ``train.grad_clip``, the spec's AdamW) under bf16
autocast, as ``train.precision`` auto does on CUDA. The FLOPs of one step (forward and backward: matmuls,
convolutions, attention) are counted by ``torch.utils.flop_counter.FlopCounterMode``; MFU is FLOPs per step x
steps/s over the GPU's dense bf16 peak (``PEAK_BF16_TFLOPS``, by device name; an unknown GPU prints n/a, or
give ``--peak-tflops``). Eager and compiled (``torch.compile`` of the model) each warm up (the compiled one
compiles then; its seconds are printed) and are then timed over ``--steps`` steps between two
``torch.cuda.synchronize()``, alternating ``--repeats`` times, best of each.

Through the CLI (``python -m hlrp_lab run specs/laq.json laq_full train``, eager, the lab's loop with its
logging and metric syncs): one rank, and with more than one GPU ``--nproc-per-node <GPUs>`` (DDP, which the
lab uses for LAQ; FSDP is for the VLA stages, and ``spec check`` refuses it for LAQ). Weak scaling: the spec's
batch per GPU. The data is the procedural source at pair level with ``--cli-episodes`` episodes (throughput
only; it need not be the full dataset, and pair level has no shard-per-rank limit). Steps/s come from the
session CSV between its first and last log row (evaluation excluded, the first rows' warm-up too).

    uv run python benchmarks/gpu_throughput.py [--steps 50] [--repeats 3] [--cli-steps 300] [--no-cli]

Without CUDA (and with ``--smoke``) it runs the same code on the CPU in fp32 at tiny sizes (laq_full's model
shrunk to width 32 and depth 1, 2 pairs, a few steps, ``torch.compile`` with the ``aot_eager`` backend, which traces the model as inductor would but generates
no code, so it takes seconds; CLI on 2 gloo ranks): the test suite's check that it still runs, MFU n/a,
figures meaningless.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from hlrp_lab.experiment.loop import autocast
from hlrp_lab.experiment.optim import build_optimizer
from hlrp_lab.spec.check import check_spec
from hlrp_lab.spec.spec_util import resolve_spec
from hlrp_lab.stages.laq import CHANNELS, LAQStage

SPEC_FILE = Path(__file__).parents[1] / "specs" / "laq.json"
SPEC_NAME = "laq_full"
TARGET_MFU = 0.35
NUM_BATCHES = 4  # distinct synthetic batches, cycled
# Dense bf16 tensor-core peak, TFLOP/s, by a part of torch.cuda.get_device_name(); the first match wins, so a
# longer name comes before a name it contains (H100 PCIe before H100, L40S before L40 before L4).
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),  # GH200 too
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("RTX 4090", 165.0),
]
SMOKE = {
    "steps": 2,
    "warmup": 1,
    "repeats": 1,
    "batch_size": 2,
    "backend": "aot_eager",
    "cli_steps": 4,
    "cli_log_every": 2,
    "cli_episodes": 48,
    "cli_ranks": 2,
}
SMOKE_MODEL = {  # --smoke: laq_full's model shrunk to a CPU toy (same classes and code path)
    f"model.{part}.{key}": value
    for part in ("encoder", "decoder")
    for key, value in (("dim", 32), ("depth", 1), ("heads", 2))
}


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    """The device's dense bf16 peak: ``given``, else the table's entry for a CUDA device's name, else None."""
    if given is not None:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for part, peak in PEAK_BF16_TFLOPS if part in name), None)


def load_spec(batch_size: int | None, data_dir: str, smoke: bool) -> dict:
    sets: dict = {"data_dir": data_dir, **(SMOKE_MODEL if smoke else {})}
    if batch_size is not None:
        sets["data.batch_size"] = batch_size
    return check_spec(resolve_spec(SPEC_FILE, SPEC_NAME, sets), ranks=1)


def synthetic_batches(spec: dict, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random frame pairs (B, 3, H, W) in [0, 1] on ``device``, as ``pairs.to_float`` gives them."""
    size, batch = spec["data"]["image_size"], spec["data"]["batch_size"]
    shape = (batch, CHANNELS, size, size)
    return [(torch.rand(shape, device=device), torch.rand(shape, device=device)) for _ in range(NUM_BATCHES)]


class Trainer:
    """The lab's LAQ training step on a model (eager or compiled) with its own AdamW."""

    def __init__(self, spec: dict, device: torch.device, compiled: bool, backend: str):
        torch.manual_seed(0)
        self.model = LAQStage.build_model(spec).to(device).train()
        self.forward: Callable = torch.compile(self.model, backend=backend) if compiled else self.model
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.params, spec["optim"])
        self.grad_clip = spec["train"]["grad_clip"]
        self.precision, self.device = spec["train"]["precision"], device

    def loss(self, frame_t: torch.Tensor, frame_tk: torch.Tensor) -> torch.Tensor:
        with autocast(self.precision, self.device):
            out = self.forward(frame_t, frame_tk)
            return F.mse_loss(out.reconstruction.float(), frame_tk) + out.quantizer_loss

    def step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.loss(*batch).backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def run(self, batches: list, steps: int) -> float:
        """Seconds for ``steps`` steps, the device drained before and after."""
        synchronize(self.device)
        started = time.perf_counter()
        for i in range(steps):
            self.step(batches[i % len(batches)])
        synchronize(self.device)
        return time.perf_counter() - started


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(spec: dict, device: torch.device, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
    """FLOPs of one training step's forward and backward (the optimizer's elementwise work is not counted)."""
    trainer = Trainer(spec, device, compiled=False, backend="")
    with FlopCounterMode(display=False) as counter:
        trainer.loss(*batch).backward()
    return counter.get_total_flops()


def mfu_text(flops: int, steps_per_s: float, peak: float | None) -> str:
    return "n/a" if peak is None else f"{100 * flops * steps_per_s / (peak * 1e12):.1f}%"


def start_cli(ranks: int, batch: int, args: argparse.Namespace, root: Path) -> list[str]:
    """The ``hlrp-lab run`` command of laq_full on ``ranks`` ranks (a global batch of ``batch`` per rank)."""
    sets = {
        "data_dir": str(root / "cache"),
        "data.pairs": "pair",
        "data.source.episodes": args.cli_episodes,
        "data.batch_size": batch * ranks,
        "data.val_split": 0.1,
        "data.val_pairs": min(256, 8 * args.cli_episodes),
        "train.max_step": args.cli_steps,
        "train.eval_frequency": args.cli_steps,
        "train.log_frequency": args.cli_log_every,
        "meta.max_session": 1,
        "meta.random_seed": 0,
        **(SMOKE_MODEL if args.smoke else {}),
    }
    command = [sys.executable, "-m", "hlrp_lab", "run", str(SPEC_FILE), SPEC_NAME, "train"]
    command += [arg for key, value in sets.items() for arg in ("-s", f"{key}={value}")]
    return command + (["--nproc-per-node", str(ranks)] if ranks > 1 else [])


def cli_steps_per_s(ranks: int, batch: int, args: argparse.Namespace, root: Path) -> float:
    """Optimizer steps/s of one CLI run (in a folder of its own under ``root``), between the first and the
    last log row of its session CSV."""
    command = start_cli(ranks, batch, args, root)
    folder = Path(tempfile.mkdtemp(dir=root))
    result = subprocess.run(
        command,
        cwd=folder,
        env={**os.environ, "TQDM_DISABLE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)}: exit {result.returncode}\n{result.stdout[-4000:]}")
    (metrics,) = folder.glob(f"data/{SPEC_NAME}_*/info/{SPEC_NAME}_t0_s0_session_metrics.csv")
    with metrics.open() as file:
        rows = [(float(row["step"]), float(row["steps_per_s"])) for row in csv.DictReader(file)]
    (first_step, first_rate), (last_step, last_rate) = rows[0], rows[-1]
    if last_step <= first_step:
        return last_rate
    return (last_step - first_step) / (last_step / last_rate - first_step / first_rate)


def in_process(args: argparse.Namespace, device: torch.device, peak: float | None) -> None:
    spec = load_spec(args.batch_size, "data/cache", args.smoke)
    if device.type == "cpu":
        spec["train"]["precision"] = "fp32"
    batches = synthetic_batches(spec, device)
    flops = step_flops(spec, device, batches[0])
    params = sum(p.numel() for p in LAQStage.build_model(spec).parameters())
    batch = spec["data"]["batch_size"]
    print(
        f"model: {SPEC_NAME}, {params / 1e6:.1f}M parameters, {spec['data']['image_size']} px, batch {batch}, "
        f"{flops / 1e9:.1f} GFLOP per step (forward + backward)"
    )
    eager = Trainer(spec, device, compiled=False, backend=args.backend)
    compiled = Trainer(spec, device, compiled=True, backend=args.backend)
    warm = {
        name: trainer.run(batches, args.warmup)
        for name, trainer in (("eager", eager), ("compiled", compiled))
    }
    print(
        f"warm-up ({args.warmup} steps): eager {warm['eager']:.1f} s, compiled {warm['compiled']:.1f} s (compiling)"
    )
    rates: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(args.repeats):
        for name, trainer in (("eager", eager), ("compiled", compiled)):
            rates[name].append(args.steps / trainer.run(batches, args.steps))
    for name, values in rates.items():
        best = max(values)
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(
            f"{name + ':':9s} {best:.2f} steps/s, MFU {mfu_text(flops, best, peak)}  "
            f"({best * batch:.0f} samples/s, {flops * best / 1e12:.1f} TFLOP/s; runs: {runs})"
        )
    print(f"compile speed-up: {max(rates['compiled']) / max(rates['eager']):.2f}x")
    if device.type == "cuda":
        print(f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


def through_cli(args: argparse.Namespace, batch: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        one = cli_steps_per_s(1, batch, args, root)
        print(f"lab loop, 1 rank:  {one:.2f} steps/s  ({one * batch:.0f} samples/s, eager)")
        if args.cli_ranks > 1:
            many = cli_steps_per_s(args.cli_ranks, batch, args, root)
            print(
                f"lab loop, {args.cli_ranks} ranks (ddp): {many:.2f} steps/s  "
                f"({many * batch * args.cli_ranks:.0f} samples/s, batch {batch} per rank), "
                f"scaling efficiency {many / one:.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (compiling, autotuning)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="pairs per step (default: the spec's)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="dense bf16 peak, if not in the table"
    )
    parser.add_argument("--cli-steps", type=int, default=300, help="steps of each CLI run")
    parser.add_argument("--cli-log-every", type=int, default=50, help="log rows; the first is warm-up")
    parser.add_argument("--cli-episodes", type=int, default=400, help="procedural episodes of the CLI runs")
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI runs")
    parser.add_argument("--smoke", action="store_true", help=f"Tiny sizes on the CPU: {json.dumps(SMOKE)}")
    args = parser.parse_args()
    args.cli_ranks = torch.cuda.device_count()
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda:
        if not args.smoke:
            print("no CUDA device: the CPU smoke path (fp32, tiny sizes; figures meaningless)")
        vars(args).update(SMOKE, smoke=True)
    device = torch.device("cuda" if cuda else "cpu")
    peak = peak_tflops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    precision = "bf16 autocast" if cuda else "fp32"
    peak_text = f"{peak:.0f} TFLOP/s bf16 dense" if peak else "unknown peak"
    print(
        f"device: {name} ({peak_text}), {precision}, torch {torch.__version__}, compile backend {args.backend}"
    )
    in_process(args, device, peak)
    if not args.no_cli:
        through_cli(args, args.batch_size or load_spec(None, "data/cache", args.smoke)["data"]["batch_size"])
    if cuda:
        print(f"target: MFU >= {100 * TARGET_MFU:.0f}% compiled on an H100/H200-class GPU")


if __name__ == "__main__":
    main()
