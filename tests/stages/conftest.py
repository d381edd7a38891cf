"""Tiny data and specs for the stage unit tests: procedural demonstrations written as WebDataset shards with the
lab's own writer (with actions, with latent codes, or with frames only), and checked specs of each stage."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from hlrp_lab.data.episode import Episode
from hlrp_lab.data.shards import write_shards
from hlrp_lab.data.sources.procedural import generate_episode
from hlrp_lab.env.push_world import DIRECTIONS
from hlrp_lab.spec.check import check_spec

SIZE, LENGTH, EPISODES = 32, 8, 12  # 12 scenes ep000000..ep000011: val_split 0.25 holds out some, not all
BATCH = 8
TINY_VLA = {
    "name": "SmolVLM",
    "config": {
        "vision_config": {"image_size": SIZE, "hidden_size": 32, "num_hidden_layers": 1},
        "text_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
    },
}
TOKENS, CODEBOOK = 2, 4
LATENT = {"name": "CodeQueries", "num_tokens": TOKENS, "codebook_size": CODEBOOK}
CONSTANT_CODE = 3  # the second token of every labelled pair
LABELS = {
    "laq_run": "data/laq_fake",
    "laq_spec": "laq",
    "weights": "data/laq_fake/model/laq_t0_s0_best.safetensors",
    "weights_sha256": "0" * 64,
    "offset": 1,
    "codebook_size": CODEBOOK,
    "num_tokens": TOKENS,
    "quantizer": "VectorQuantizer",
}


def demonstrations() -> list[Episode]:
    """Procedural episodes with frames, actions (2-D) and an instruction."""
    return [generate_episode(100 + i, SIZE, LENGTH, num_objects=2) for i in range(EPISODES)]


def direction_code(instruction: str) -> int:
    """The index of the instruction's push direction ("push the red block left" -> 0)."""
    return list(DIRECTIONS).index(instruction.rsplit(" ", 1)[1])


def labelled(episode: Episode) -> Episode:
    """``episode`` with codes of the pairs (t, t+1): token 0 is the push direction, token 1 a constant."""
    codes = np.zeros((len(episode.frames) - 1, TOKENS), dtype=np.int64)
    codes[:, 0] = direction_code(episode.instruction)
    codes[:, 1] = CONSTANT_CODE
    return dataclasses.replace(episode, codes=codes)


def write(directory: Path, episodes: list[Episode], **extra) -> Path:
    write_shards(episodes, directory, name="test", source="test", source_args={}, extra=extra or None)
    return directory


@pytest.fixture(scope="session")
def action_shards(tmp_path_factory) -> Path:
    """Demonstrations with actions and no codes."""
    return write(tmp_path_factory.mktemp("actions"), demonstrations())


@pytest.fixture(scope="session")
def labelled_shards(tmp_path_factory) -> Path:
    """Demonstrations with latent codes, and a manifest that records the labels as `data label` does."""
    return write(tmp_path_factory.mktemp("labelled"), [labelled(e) for e in demonstrations()], labels=LABELS)


@pytest.fixture(scope="session")
def frame_shards(tmp_path_factory) -> Path:
    """Frames and instructions only, as videos give."""
    episodes = [dataclasses.replace(e, actions=None) for e in demonstrations()]
    return write(tmp_path_factory.mktemp("frames"), episodes)


def vla_spec(stage: str, shards: Path, run_dir: Path, **change: dict) -> dict:
    """A checked spec of a VLA stage (foundation, finetune) on ``shards`` at pair level, writing its tokenizer
    under ``run_dir``; ``change`` updates sections."""
    model = {"vla": TINY_VLA, "latent_head": LATENT}
    if stage == "finetune":
        model["action_head"] = {"name": "MLPRegression", "hidden": 32}
    spec = {
        "stage": stage,
        "data": {
            "shards": str(shards),
            "image_size": SIZE,
            "pairs": "pair",
            "batch_size": BATCH,
            "num_workers": 0,
            "val_split": 0.25,
            "val_pairs": 16,
        },
        "model": model,
        "optim": {"name": "AdamW", "lr": 1e-3},
        "train": {"max_step": 10, "log_frequency": 5, "eval_frequency": 5},
        "meta": {"random_seed": 0, "spec_name": stage, "run_dir": str(run_dir), "trial": 0},
    }
    for section, values in change.items():
        spec.setdefault(section, {}).update(values)
    return check_spec(spec)


def grad_norm(module: torch.nn.Module) -> float:
    """The summed absolute gradient of ``module``'s parameters (0 where none has reached it)."""
    return sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None)


def fit_fixed_batch(stage, batch: dict, steps: int, lr: float) -> list[float]:
    """Losses of ``steps`` Adam steps of ``stage.train_step`` on one batch, the model in training mode."""
    stage.model.train()
    optimizer = torch.optim.Adam([p for p in stage.model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss, _ = stage.train_step(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def same_batch(a: dict, b: dict) -> bool:
    """Whether two batches hold the same keys and values (tensors equal, instruction lists equal)."""
    if a.keys() != b.keys():
        return False
    return all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)
