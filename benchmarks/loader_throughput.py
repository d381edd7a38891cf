"""Loader throughput: frame pairs/s from WebDataset shards vs one PNG file per frame, and what training eats.

Writes the same procedural frames (64x64) twice: as shards, and as a directory tree with one PNG per frame
read by a map-style torch Dataset (the small-files baseline). Both are read through a DataLoader with the
same number of workers and batch size. Then measures how many pairs/s the `laq_debug` LAQ training step
consumes on this machine. Prints all three and the ratios (targets: shards >= 3x the baseline, and faster
than the training step).

    uv run python benchmarks/loader_throughput.py [--episodes 400] [--batches 500] [--workers 2] [--repeats 3]

``--smoke`` runs it at tiny sizes in seconds (the test suite's check that it still runs; figures meaningless).
"""

import argparse
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler

from hlrp_lab.data.loader import batches, scene_stream, worker_context
from hlrp_lab.data.pairs import collate
from hlrp_lab.data.shards import shard_urls, write_shards
from hlrp_lab.data.sources.procedural import ProceduralConfig, generate_episodes
from hlrp_lab.spec.check import check_spec
from hlrp_lab.stages.laq import LAQStage

SPEC_FILE = Path(__file__).parents[1] / "specs" / "laq.json"
SIZE, LENGTH, BATCH = 64, 32, 32
SMOKE = {"episodes": 8, "batches": 3, "workers": 1, "repeats": 1, "training_steps": 2}


class PngPairs(Dataset):
    """Map-style: pair i is (frame t, frame t+1) of one episode, each read from its own PNG file, with the
    episode's instruction (as every shard pair has)."""

    def __init__(self, root: Path, instructions: list[str]):
        self.root, self.instructions = root, instructions
        self.index = [(e, t) for e in range(len(instructions)) for t in range(LENGTH - 1)]

    def __len__(self) -> int:
        return len(self.index)

    def load(self, episode: int, t: int) -> np.ndarray:
        return np.asarray(Image.open(self.root / f"ep{episode:06d}" / f"{t:04d}.png").convert("RGB"))

    def __getitem__(self, i: int) -> dict[str, np.ndarray | str]:
        episode, t = self.index[i]
        return {
            "frame_t": self.load(episode, t),
            "frame_tk": self.load(episode, t + 1),
            "instruction": self.instructions[episode],
        }


def write_both(root: Path, episodes: int) -> tuple[list[str], PngPairs]:
    """The same procedural episodes as shards (their URLs) and as one PNG per frame (their dataset)."""
    config = ProceduralConfig(episodes=episodes, episode_length=LENGTH)
    data = list(generate_episodes(config, SIZE))
    write_shards(data, root / "shards", name="bench", source="procedural", source_args=config.model_dump())
    for e, episode in enumerate(data):
        folder = root / "png" / f"ep{e:06d}"
        folder.mkdir(parents=True)
        for t, frame in enumerate(episode.frames):
            Image.fromarray(frame).save(folder / f"{t:04d}.png")
    return shard_urls(root / "shards"), PngPairs(root / "png", [episode.instruction for episode in data])


def pairs_per_second(stream: Iterator[dict], num_batches: int) -> float:
    next(stream)  # workers started, buffers filled
    started = time.perf_counter()
    pairs = sum(len(next(stream)["frame_t"]) for _ in range(num_batches))
    return pairs / (time.perf_counter() - started)


def training_pairs_per_second(spec: dict, steps: int) -> float:
    """Pairs/s the laq_debug forward+backward+AdamW step consumes (random in-memory batches)."""
    torch.manual_seed(0)
    model = LAQStage.build_model(spec)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    frames = torch.rand(2, BATCH, 3, SIZE, SIZE)
    started = time.perf_counter()
    for _ in range(steps):
        out = model(frames[0], frames[1])
        loss = F.mse_loss(out.reconstruction, frames[1]) + out.quantizer_loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * BATCH / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=400)
    parser.add_argument("--batches", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="Alternate the loaders; keep each one's best.")
    parser.add_argument("--pairs-per-scene", type=int, default=None, help="default: the spec's")
    parser.add_argument("--training-steps", type=int, default=30, help="Steps timed for the training rate.")
    parser.add_argument("--smoke", action="store_true", help=f"Tiny sizes, to check that it runs: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)
    spec = check_spec(json.loads(SPEC_FILE.read_text())["laq_debug"])
    data = {**spec["data"], "pairs": "scene", "batch_size": BATCH, "val_split": 0.0}
    data["pairs_per_scene"] = args.pairs_per_scene or data["pairs_per_scene"]
    png_runs, shard_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        urls, png_pairs = write_both(Path(tmp), args.episodes)
        for repeat in range(args.repeats):  # alternating, so that machine noise hits both
            png_loader = DataLoader(
                png_pairs,
                batch_size=BATCH,
                sampler=RandomSampler(png_pairs, replacement=True, num_samples=(args.batches + 1) * BATCH),
                num_workers=args.workers,
                collate_fn=collate,  # the same numpy batches and transport as the shard loader
                multiprocessing_context=worker_context(),
            )
            png_runs.append(pairs_per_second(iter(png_loader), args.batches))
            stream = batches(scene_stream(urls, data, seed=repeat), args.workers)
            shard_runs.append(pairs_per_second(stream, args.batches))
    training = training_pairs_per_second(spec, steps=args.training_steps)
    shards, png = max(shard_runs), max(png_runs)
    print(
        f"{args.episodes} episodes x {LENGTH} frames at {SIZE}x{SIZE}, batch {BATCH}, {args.workers} workers"
    )
    print(f"pairs_per_scene {data['pairs_per_scene']}, shuffle buffer {data['shuffle_buffer']}")
    print(f"best of {args.repeats} runs of {args.batches} batches each (all runs: pairs/s)")
    print(f"shards (WebDataset):     {shards:8.0f} pairs/s  {[round(r) for r in shard_runs]}")
    print(f"PNG files (map-style):   {png:8.0f} pairs/s  {[round(r) for r in png_runs]}")
    print(f"LAQ training step eats:  {training:8.0f} pairs/s (laq_debug, {torch.get_num_threads()} threads)")
    print(f"ratio shards/PNG:        {shards / png:8.2f}  (target >= 3)")
    print(f"ratio shards/training:   {shards / training:8.2f}  (target > 1)")


if __name__ == "__main__":
    main()
