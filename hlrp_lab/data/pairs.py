"""Frame pairs (t, t+k) over in-memory episodes, split by episode, batches sampled by (seed, step)."""

import numpy as np
import torch

from hlrp_lab.data.episode import Episode


def split_episodes(
    episodes: list[Episode], val_split: float, seed: int
) -> tuple[list[Episode], list[Episode]]:
    """Train and validation episodes; no episode is on both sides. Deterministic in ``seed``.

    With ``val_split > 0`` and at least two episodes, each side gets at least one.
    """
    if val_split <= 0 or len(episodes) < 2:
        return list(episodes), []
    order = np.random.default_rng(seed).permutation(len(episodes))
    num_val = min(max(1, round(val_split * len(episodes))), len(episodes) - 1)
    val = set(order[:num_val].tolist())
    train = [e for i, e in enumerate(episodes) if i not in val]
    return train, [e for i, e in enumerate(episodes) if i in val]


def pair_starts(lengths: list[int], offset: int) -> np.ndarray:
    """The flat frame index of every frame t that has a frame t+offset in the same episode."""
    firsts = np.cumsum([0, *lengths[:-1]])
    return np.concatenate(
        [first + np.arange(max(n - offset, 0)) for first, n in zip(firsts, lengths, strict=True)]
    )


def pair_actions(actions: np.ndarray, offset: int) -> np.ndarray:
    """(T - offset, offset * A): for each t, the actions t .. t+offset-1 concatenated."""
    windows = np.lib.stride_tricks.sliding_window_view(actions, offset, axis=0)  # (T - offset, A, offset)
    return windows.transpose(0, 2, 1).reshape(len(windows), -1)


class FramePairs:
    """Every valid (t, t+offset) pair of the episodes; frames stored once as a uint8 (N, 3, H, W) tensor."""

    def __init__(self, episodes: list[Episode], offset: int):
        longest = max((len(e.frames) for e in episodes), default=0)
        if offset < 1:
            raise ValueError(f"data.frame_offset {offset}: must be at least 1")
        if offset >= longest:
            raise ValueError(
                f"data.frame_offset {offset}: no episode is long enough (longest has {longest} frames)"
            )
        self.offset = offset
        self.frames = (
            torch.from_numpy(np.concatenate([e.frames for e in episodes])).permute(0, 3, 1, 2).contiguous()
        )
        self.starts = torch.from_numpy(pair_starts([len(e.frames) for e in episodes], offset))
        usable = [e for e in episodes if len(e.frames) > offset]
        self.actions = torch.from_numpy(
            np.concatenate([pair_actions(e.actions, offset) for e in usable])
        ).float()

    def __len__(self) -> int:
        return len(self.starts)

    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """``frame_t`` and ``frame_tk`` float32 in [0, 1] (B, 3, H, W); ``action`` the true actions between them."""
        starts = self.starts[indices]
        return {
            "frame_t": self.frames[starts].float().div_(255),
            "frame_tk": self.frames[starts + self.offset].float().div_(255),
            "action": self.actions[indices],
        }


def batch_indices(num_pairs: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """The pair indices of batch number ``step``: a pure function of (seed, step), so a resumed run sees the same."""
    state = np.random.SeedSequence([seed % 2**64, step]).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state))
    return torch.randint(num_pairs, (batch_size,), generator=generator)
