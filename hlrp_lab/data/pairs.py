"""Frame pairs (t, t+k): the train/val split by scene, and the two ways of drawing pairs.

Pair level: every valid (t, t+k) of the training episodes is indexed up front (``FramePairs``), optionally
capped at ``max_samples``; batches are a pure function of (seed, step). Scene level: each scene read from the
stream yields ``pairs_per_scene`` random pairs (``sample_pairs``).

Pairs and batches hold uint8 (H, W, 3) frames; ``to_float`` turns a batch into float (B, 3, H, W) tensors in
[0, 1] on the training device. Every pair has its episode's ``instruction``. Where the data has actions, a
pair's ``action`` is the sum of the actions from t to t+k (the net command) and ``action_chunk`` the
``chunk`` actions from t (padded with the episode's last action); where it has proprio states, ``state`` is
frame t's; where it has latent codes, ``codes`` are those of frame t. With a ``label_fraction`` (LAQ's action
supervision), the training pairs of data with actions have ``labelled``: whether their scene is one of the
fixed fraction whose actions the supervised loss may use (``is_labelled_scene``).
"""

import hashlib
import random
from typing import Any

import numpy as np
import torch

from hlrp_lab.data.episode import Episode


def scene_position(scene: str) -> float:
    """Where ``scene`` falls in [0, 1): a fixed hash of its name."""
    digest = hashlib.sha256(scene.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_val_scene(scene: str, val_split: float) -> bool:
    """Whether ``scene`` is held out: a fixed hash, so every session, worker and rank agrees."""
    return scene_position(scene) < val_split


def scene_rank(scene: str, ranks: int) -> int:
    """The rank that trains on ``scene`` when ranks share shards: a fixed hash (bytes of the digest that
    ``scene_position`` does not use, so the share is independent of the validation split)."""
    digest = hashlib.sha256(scene.encode()).digest()
    return int.from_bytes(digest[8:16], "big") % ranks


def is_labelled_scene(scene: str, fraction: float) -> bool:
    """Whether ``scene``'s actions are given to LAQ's supervised loss: a fixed hash (bytes of the digest that
    neither the split nor the rank share use), so the same scenes are labelled in every step, run and rank."""
    digest = hashlib.sha256(scene.encode()).digest()
    return int.from_bytes(digest[16:24], "big") / 2**64 < fraction


def scene_rng(scene: str) -> random.Random:
    """A generator fixed by the scene name (for the validation pairs)."""
    return random.Random(hashlib.sha256(scene.encode()).digest())


def valid_pairs(length: int, offsets: list[int]) -> list[tuple[int, int]]:
    """Every (t, offset) with frame t + offset inside an episode of ``length`` frames."""
    return [(t, k) for k in offsets for t in range(length - k)]


def make_pair(
    episode: Episode, t: int, k: int, chunk: int = 1, label_fraction: float = 0.0
) -> dict[str, Any]:
    """Views of frames t and t+k (H, W, 3) with the instruction, actions and codes of frame t, and whether the
    pair is labelled (see the module docstring); ``collate`` copies once."""
    pair = {
        "frame_t": episode.frames[t],
        "frame_tk": episode.frames[t + k],
        "instruction": episode.instruction,
    }
    if episode.actions is not None:
        pair["action"] = episode.actions[t : t + k].sum(0, dtype=np.float32)
        pair["action_chunk"] = episode.actions[np.minimum(np.arange(t, t + chunk), len(episode.actions) - 1)]
        if label_fraction > 0:
            pair["labelled"] = np.bool_(is_labelled_scene(episode.scene, label_fraction))
    if episode.states is not None:
        pair["state"] = episode.states[t]
    if episode.codes is not None and t < len(episode.codes):  # codes label pairs at one offset only
        pair["codes"] = episode.codes[t]
    return pair


def sample_pairs(
    episode: Episode,
    offsets: list[int],
    count: int,
    rng: random.Random,
    chunk: int = 1,
    label_fraction: float = 0.0,
) -> list[dict[str, Any]]:
    """Up to ``count`` distinct random pairs of ``episode`` (none if it is shorter than every offset)."""
    candidates = valid_pairs(len(episode.frames), offsets)
    picks = rng.sample(candidates, min(count, len(candidates)))
    return [make_pair(episode, t, k, chunk, label_fraction) for t, k in picks]


# in a batch only if every pair has them
ARRAY_KEYS = ("action", "action_chunk", "state", "codes", "labelled")


def collate(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack pairs into a batch of uint8 (B, H, W, 3) frames, the arrays every pair has, and the list of
    instructions.

    Batches stay numpy until ``to_float``: DataLoader workers pass numpy arrays through a pipe much faster
    than they pass small tensors through shared memory.
    """
    batch: dict[str, Any] = {key: np.stack([p[key] for p in pairs]) for key in ("frame_t", "frame_tk")}
    for key in ARRAY_KEYS:
        if all(key in p for p in pairs):
            batch[key] = np.stack([p[key] for p in pairs])
    batch["instruction"] = [p["instruction"] for p in pairs]
    return batch


def to_float(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch on ``device``: arrays as tensors, frames float32 (B, 3, H, W) in [0, 1]; instructions as
    they are."""
    moved = {
        k: torch.from_numpy(v).to(device, non_blocking=True) if isinstance(v, np.ndarray) else v
        for k, v in batch.items()
    }
    for key in ("frame_t", "frame_tk"):
        if key in moved:
            moved[key] = moved[key].permute(0, 3, 1, 2).float().div_(255).contiguous()
    return moved


class FramePairs:
    """Pair level: every valid (t, t+k) of the episodes for each offset, optionally a fixed random subset."""

    def __init__(
        self,
        episodes: list[Episode],
        offsets: list[int],
        max_samples: int | None = None,
        seed: int = 0,
        chunk: int = 1,
        label_fraction: float = 0.0,
    ):
        longest = max((len(e.frames) for e in episodes), default=0)
        if longest <= min(offsets):
            raise ValueError(
                f"data.offsets {offsets}: no episode is long enough (longest has {longest} frames)"
            )
        self.episodes, self.chunk, self.label_fraction = episodes, chunk, label_fraction
        self.index = [
            (e, t, k) for e, ep in enumerate(episodes) for t, k in valid_pairs(len(ep.frames), offsets)
        ]
        if max_samples is not None and max_samples < len(self.index):
            keep = sorted(random.Random(seed).sample(range(len(self.index)), max_samples))
            self.index = [self.index[i] for i in keep]

    def __len__(self) -> int:
        return len(self.index)

    def pair(self, i: int) -> dict[str, Any]:
        e, t, k = self.index[i]
        return make_pair(self.episodes[e], t, k, self.chunk, self.label_fraction)

    def batch(self, indices: torch.Tensor) -> dict[str, Any]:
        return collate([self.pair(int(i)) for i in indices])


def batch_indices(num_pairs: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """The pair indices of batch number ``step``: a pure function of (seed, step), so a resumed run sees the same."""
    state = np.random.SeedSequence([seed % 2**64, step]).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state))
    return torch.randint(num_pairs, (batch_size,), generator=generator)
