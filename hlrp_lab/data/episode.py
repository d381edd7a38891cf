"""One recorded episode: frames, and where the source knows them, actions, proprio states and success."""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Episode:
    """A scene of ``T`` frames. ``actions[i]`` moves frame ``i`` to frame ``i + 1``.

    Videos have no actions; simulator demonstrations have all fields. ``codes`` are latent actions written by
    ``hlrp-lab data label``: ``codes[i]`` are the LAQ codes of the pair (frame ``i``, frame ``i + k``) for the
    labelling offset ``k`` the manifest records.
    """

    frames: np.ndarray  # uint8 (T, H, W, 3)
    instruction: str
    task: str
    seed: int
    actions: np.ndarray | None = None  # float32 (T-1, A)
    states: np.ndarray | None = None  # float32 (T, S): proprioceptive state at each frame
    success: np.ndarray | None = None  # bool (T,): task solved at each frame
    scene: str | None = None  # episodes of one scene (clips of a video) stay on one side of the val split
    codes: np.ndarray | None = None  # int64 (T-k, num_tokens): latent action codes of (i, i + k)
