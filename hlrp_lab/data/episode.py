"""One recorded episode: frames, the actions between them, and its instruction."""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Episode:
    frames: np.ndarray  # uint8 (T, H, W, 3)
    actions: np.ndarray  # float32 (T-1, A): action i moves frame i to frame i+1
    instruction: str
    task: str
    seed: int
