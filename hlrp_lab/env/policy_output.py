"""What a closed-loop evaluator does with a policy's output: check and clip its actions, record videos."""

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
