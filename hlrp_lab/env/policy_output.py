"""What a closed-loop evaluator does with a policy's output: check and clip its actions, record videos, and
sum up the episodes' success."""

from collections.abc import Callable
from pathlib import Path

import numpy as np

VIDEO_FPS = 10
VIDEO_MIN_WIDTH = 128


def checked_actions(actions: np.ndarray, count: int, steps: int, size: int) -> np.ndarray:
    """The first ``steps`` actions of the policy's chunks, (count, steps, size) float32 clipped to [-1, 1] as the
    datasets record the experts'; single actions (count, size) are chunks of one."""
    actions = np.asarray(actions, dtype=np.float64)
    chunks = actions[:, None] if actions.ndim == 2 else actions
    shape = chunks.shape
    if len(shape) != 3 or shape[0] != count or shape[1] < steps or shape[2] != size:
        raise ValueError(
            f"the policy must return finite ({count}, {size}) actions or ({count}, chunk, {size}) chunks of at least "
            f"{steps} actions (those executed per prediction), got shape {actions.shape}"
        )
    if not np.isfinite(chunks).all():
        raise ValueError(f"the policy must return finite ({count}, {size}) actions, got NaN or infinity")
    return np.clip(chunks[:, :steps], -1.0, 1.0).astype(np.float32)


def write_video(path: Path, frames: list[np.ndarray], fps: int = VIDEO_FPS) -> None:
    """An mp4 of ``frames``, upscaled (nearest neighbour) to at least VIDEO_MIN_WIDTH pixels, even sides."""
    import av  # here: only a run that writes videos needs PyAV

    height, width = frames[0].shape[:2]
    scale = max(1, -(-VIDEO_MIN_WIDTH // width))
    if height * scale % 2 or width * scale % 2:  # yuv420p wants even sides: an odd side, an odd scale
        scale += 1
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width * scale, height * scale, "yuv420p"
        for frame in frames:
            big = np.ascontiguousarray(frame.repeat(scale, axis=0).repeat(scale, axis=1))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(big, format="rgb24")))
        container.mux(stream.encode())


def success_metrics(
    outcomes: list[tuple[str, bool, int]],
    tasks: list[str],
    group_of: Callable[[str], str] | None = None,
    groups: tuple[str, ...] = (),
) -> dict[str, float]:
    """``(task, success, steps)`` of every episode: success over all of them and per task of ``tasks`` (and, with
    ``group_of``, per group of ``groups`` that has tasks, and the mean of those groups), as rates and as
    LeRobot's percentages; the mean episode length and the number of episodes."""
    success = {task: [ok for name, ok, _ in outcomes if name == task] for task in tasks}
    grouped = {
        group: [ok for task in tasks if group_of(task) == group for ok in success[task]]
        for group in (groups if group_of else ())
    }
    group_rates = {group: 100 * float(np.mean(values)) for group, values in grouped.items() if values}
    overall = float(np.mean([ok for _, ok, _ in outcomes]))
    return {
        "success_rate": overall,
        **{f"success/{task}": float(np.mean(values)) for task, values in success.items()},
        "pc_success": 100 * overall,
        **{f"pc_success/{task}": 100 * float(np.mean(values)) for task, values in success.items()},
        **{f"pc_success/{group}": rate for group, rate in group_rates.items()},
        **({"pc_success_group_mean": float(np.mean(list(group_rates.values())))} if group_of else {}),
        "episode_length": float(np.mean([steps for _, _, steps in outcomes])),
        "episodes": float(len(outcomes)),
    }
