"""Framework overhead: the same LAQ model on the same in-memory batches, bare PyTorch loop vs a Session.

Prints steps/s of both and their ratio (Session / bare); the target is >= 0.95 on CPU. The runs alternate
(bare, session, bare, session, ...) so that machine noise hits both alike; the best of each is compared.

    uv run python benchmarks/loop_overhead.py [--steps 150] [--repeats 3]

``--smoke`` runs it at tiny sizes in seconds (the test suite's check that it still runs; figures meaningless).
"""

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import ClassVar

import torch
from torch.nn import functional as F

from hlrp_lab.data.pairs import FramePairs, batch_indices, to_float
from hlrp_lab.data.sources.procedural import ProceduralConfig, generate_episodes
from hlrp_lab.experiment.control import Session
from hlrp_lab.lib.logger import setup_logger
from hlrp_lab.lib.util import make_run_dir
from hlrp_lab.spec.check import check_spec
from hlrp_lab.stages import STAGES
from hlrp_lab.stages.config import LAQConfig
from hlrp_lab.stages.laq import LAQStage, build_target

SPEC_FILE = Path(__file__).parents[1] / "specs" / "laq.json"
NUM_BATCHES = 16
SMOKE = {"steps": 2, "repeats": 1}


def in_memory_batches(spec: dict) -> list[dict[str, torch.Tensor]]:
    data = spec["data"]
    episodes = list(generate_episodes(ProceduralConfig(episodes=32, episode_length=16), data["image_size"]))
    pairs = FramePairs(episodes, data["offsets"])
    return [
        to_float(pairs.batch(batch_indices(len(pairs), data["batch_size"], 0, i)), torch.device("cpu"))
        for i in range(NUM_BATCHES)
    ]


STAGES.register_config("laq_in_memory")(LAQConfig)  # LAQ's keys, families and metric


@STAGES.register_as("laq_in_memory")
class InMemoryLAQ(LAQStage):
    """The LAQ stage serving a fixed list of in-memory batches (no shards, trivial evaluation)."""

    batches: ClassVar[list[dict[str, torch.Tensor]]] = []

    def __init__(self, spec: dict, device: torch.device, seed: int):
        self.target = build_target(spec).to(device)  # Pixels: the frame itself, as in bare_loop
        self.model = self.build_model(spec).to(device)

    def train_batch(self, index: int) -> dict[str, torch.Tensor]:
        return self.batches[index % len(self.batches)]

    def evaluate(self) -> dict[str, float]:
        return {"val_psnr": 0.0}


def bare_loop(spec: dict, batches: list[dict[str, torch.Tensor]], steps: int) -> float:
    """Steps/s of the plainest loop: forward, loss, backward, AdamW step."""
    torch.manual_seed(0)
    model = LAQStage.build_model(spec)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec["optim"]["lr"])
    model.train()
    started = time.perf_counter()
    for step in range(steps):
        batch = batches[step % len(batches)]
        out = model(batch["frame_t"], batch["frame_tk"])
        loss = F.mse_loss(out.reconstruction, batch["frame_tk"]) + out.quantizer_loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps / (time.perf_counter() - started)


def session_loop(spec: dict, root: Path, steps: int) -> float:
    """Steps/s of a full Session (loop, scheduler, logging, progress bar); evaluation time is excluded."""
    spec = json.loads(json.dumps(spec))
    spec["meta"].update(spec_name="bench", run_dir=str(make_run_dir(root, "bench", str(time.time_ns()))))
    return Session(spec).run()["steps_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help=f"Tiny sizes, to check that it runs: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)
    setup_logger()
    spec = check_spec(json.loads(SPEC_FILE.read_text())["laq_debug"])
    spec["stage"] = "laq_in_memory"
    spec["optim"].update(warmup_steps=0)
    spec["train"].update(max_step=args.steps, eval_frequency=args.steps, log_frequency=25, grad_clip=None)
    spec["meta"].update(random_seed=0)
    InMemoryLAQ.batches = in_memory_batches(spec)
    bare, session = [], []
    with tempfile.TemporaryDirectory() as root:
        for _ in range(args.repeats):
            bare.append(bare_loop(spec, InMemoryLAQ.batches, args.steps))
            session.append(session_loop(spec, Path(root), args.steps))
    print(f"threads: {torch.get_num_threads()}, steps per run: {args.steps}, repeats: {args.repeats}")
    print(f"bare PyTorch loop: {max(bare):.2f} steps/s  (runs: {', '.join(f'{v:.2f}' for v in bare)})")
    print(f"hlrp-lab Session:  {max(session):.2f} steps/s  (runs: {', '.join(f'{v:.2f}' for v in session)})")
    print(f"ratio session/bare: {max(session) / max(bare):.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
