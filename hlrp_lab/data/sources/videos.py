"""Videos: every mp4/webm/mkv/avi file under a folder, decoded with PyAV, resampled, resized, center-cropped.

Frame rate: output frame ``i`` shows the last decoded frame whose presentation time is at most
``start + i / fps`` (no interpolation), for every such time before the video's end (last frame time plus the
last frame interval). A video slower than ``fps`` has frames repeated, so one step is always ``1 / fps``
seconds; frames without a timestamp are ignored. Only the selected frames are converted to RGB: scaled so
the short side is ``image_size``, then the center square is kept.

Instructions: an optional CSV with the header ``file,instruction``. ``file`` is a path relative to ``root``
(``kitchen/take1.mp4``) or a bare file name (``take1.mp4``, given to every video of that name); a relative
path wins over a bare name. Videos without a row get the instruction "".

Unreadable files (corrupt, empty, no video stream) and videos shorter than 2 frames after resampling are
logged with a warning and skipped; after iteration ``read`` counts the videos read and ``skipped`` names
the others. A video that decodes to fewer frames than its container declares (a truncated file whose index
sits at the front) is kept as far as it decodes, with a warning giving both counts.
"""

import csv
import math
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from loguru import logger

from hlrp_lab.data.episode import Episode
from hlrp_lab.data.sources import DATA_SOURCES
from hlrp_lab.data.sources.config import MIN_FRAMES, VideosConfig
from hlrp_lab.lib.errors import SpecError

if TYPE_CHECKING:
    import av

EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi")
DECLARED_SLACK = 1  # frames a video may fall short of its container's declared count (duration rounding)


class UnreadableVideo(Exception):
    """A video that gives no usable frames; the message says why."""


class Video(NamedTuple):
    frames: np.ndarray  # uint8 (T, size, size, 3) at the output frame rate
    decoded: int  # source frames decoded
    declared: int  # source frames the container declares (0: it declares neither a count nor a duration)

    @property
    def truncated(self) -> bool:
        return self.decoded + DECLARED_SLACK < self.declared


class Counted(Iterator):
    """The items of an iterable, counting those passed on so far in ``count``."""

    def __init__(self, items: Iterable[Any]):
        self.items, self.count = iter(items), 0

    def __next__(self) -> Any:
        item = next(self.items)
        self.count += 1
        return item


def find_videos(root: Path) -> list[Path]:
    """Every video file under ``root``, sorted by relative path."""
    paths = (p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
    return sorted(paths, key=lambda p: p.relative_to(root).as_posix())


def clean(cell: str | None) -> str:
    """A CSV cell without surrounding blanks ("" where a short row has none)."""
    return (cell or "").strip()


def read_instructions(path: Path, names: list[str]) -> dict[str, str]:
    """Relative video name -> instruction, from a ``file,instruction`` CSV (relative paths beat bare names)."""
    if not path.is_file():
        raise SpecError(f"videos: instruction file {str(path)!r} is not a file")
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        if not {"file", "instruction"} <= set(reader.fieldnames or []):
            raise SpecError(f"videos: instruction file {str(path)!r} needs the header file,instruction")
        rows = {clean(row["file"]).removeprefix("./"): clean(row["instruction"]) for row in reader}
    found = {name: rows.get(name, rows.get(Path(name).name)) for name in names}
    if unmatched := sorted(set(rows) - set(names) - {Path(name).name for name in names}):
        logger.warning(f"videos: {len(unmatched)} rows of {path} match no video: {', '.join(unmatched[:5])}")
    return {name: text for name, text in found.items() if text is not None}


def exact(value: float) -> Fraction:
    """A float from a config (10.0, 0.4, 29.97) as the fraction it was written as."""
    return Fraction(value).limit_denominator(1_000_000)


def timed_frames(container: "av.container.InputContainer") -> Iterator[tuple["av.VideoFrame", Fraction]]:
    """The first video stream's frames, decoded on all threads, with their presentation times in seconds."""
    if not container.streams.video:
        raise UnreadableVideo("no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    for frame in container.decode(stream):
        if frame.pts is not None:
            yield frame, frame.pts * stream.time_base


def times_before(target: Fraction, end: Fraction, step: Fraction) -> int:
    """How many of the output times ``target``, ``target + step``, ... lie before ``end``."""
    return max(0, math.ceil((end - target) / step))


def pick_frames(
    timed: Iterator[tuple["av.VideoFrame", Fraction]], step: Fraction
) -> Iterator[tuple["av.VideoFrame", int]]:
    """(frame, repeats): the last frame at or before each output time ``start + i * step``, in order."""
    pending, target, last, gap = None, Fraction(0), Fraction(0), Fraction(0)
    for frame, time in timed:
        if pending is None:
            target = last = time
        if repeats := times_before(target, time, step):
            yield pending, repeats
            target += repeats * step
        pending, last, gap = frame, time, time - last
    if pending is not None and (repeats := times_before(target, last + gap, step)):
        yield pending, repeats  # the last frame lasts as long as the gap before it


def square_rgb(frame: "av.VideoFrame", size: int) -> np.ndarray:
    """uint8 (size, size, 3): ``frame`` scaled so its short side is ``size``, center-cropped."""
    short, long = sorted((frame.width, frame.height))
    scaled = max(size, (long * size + short // 2) // short)
    width, height = (scaled, size) if frame.width >= frame.height else (size, scaled)
    image = frame.to_ndarray(width=width, height=height, format="rgb24")
    top, left = (height - size) // 2, (width - size) // 2
    return np.ascontiguousarray(image[top : top + size, left : left + size])


def declared_frames(container: "av.container.InputContainer") -> int:
    """The source frames the container declares for its first video stream: its frame count, else its
    duration times its average rate (0 when it declares neither)."""
    stream = container.streams.video[0]
    if stream.frames:
        return stream.frames
    if container.duration and stream.average_rate:
        return round(Fraction(container.duration, 1_000_000) * stream.average_rate)
    return 0


def read_video(path: Path, fps: float, size: int) -> Video:
    """The frames of ``path`` at ``fps`` and the source frame counts decoded and declared; raises
    UnreadableVideo."""
    import av  # here, not at the top: listing the data sources must not need PyAV

    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            timed = Counted(timed_frames(container))
            for frame, repeats in pick_frames(timed, 1 / exact(fps)):
                frames += [square_rgb(frame, size)] * repeats
            declared = declared_frames(container)
    except av.FFmpegError as err:
        raise UnreadableVideo(err.strerror or str(err)) from None
    if len(frames) < MIN_FRAMES:
        raise UnreadableVideo(f"{len(frames)} frames at {fps:g} fps; at least {MIN_FRAMES} are needed")
    return Video(np.stack(frames), timed.count, declared)


def cut_clips(frames: np.ndarray, length: int | None) -> list[np.ndarray]:
    """Consecutive clips of ``length`` frames (all of ``frames`` if None); a 1-frame tail is dropped."""
    if length is None:
        return [frames]
    clips = [frames[start : start + length] for start in range(0, len(frames), length)]
    return [clip for clip in clips if len(clip) >= MIN_FRAMES]


@DATA_SOURCES.register_as("videos")
class VideoSource:
    """A folder of videos, resampled to a frame rate, resized and center-cropped; no actions."""

    Config = VideosConfig

    def __init__(self, config: VideosConfig, *, image_size: int):
        self.config = config
        self.image_size = image_size
        self.root = Path(config.root)
        if not self.root.is_dir():
            raise SpecError(f"videos: root {config.root!r} is not a directory")
        self.videos = find_videos(self.root)
        if not self.videos:
            raise SpecError(
                f"videos: no video files found in {config.root} (looked for {', '.join(EXTENSIONS)}, "
                "in subfolders too)"
            )
        self.names = [path.relative_to(self.root).as_posix() for path in self.videos]
        file = config.instruction_file
        self.instructions = read_instructions(Path(file), self.names) if file else {}
        self.read = 0
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.videos)

    def episodes(self) -> Iterator[Episode]:
        """One episode per video or clip, in sorted file order; ``seed`` is the episode's index."""
        for seed, (name, task, frames) in enumerate(self.clips()):
            yield Episode(
                frames=frames, instruction=self.instructions.get(name, ""), task=task, seed=seed, scene=name
            )

    def clips(self) -> Iterator[tuple[str, str, np.ndarray]]:
        """(video name, task, frames) of every clip of every readable video; counts read and skipped."""
        self.read, self.skipped = 0, []
        clip_frames = round(self.config.clip_seconds * self.config.fps) if self.config.clip_seconds else None
        for path, name in zip(self.videos, self.names, strict=True):
            try:
                video = read_video(path, self.config.fps, self.image_size)
            except UnreadableVideo as err:
                logger.warning(f"videos: skipped {name}: {err}")
                self.skipped.append(name)
                continue
            if video.truncated:
                logger.warning(
                    f"videos: {name} ends early (truncated?): decoded {video.decoded} of the "
                    f"{video.declared} frames its container declares; kept {len(video.frames)} frames "
                    f"at {self.config.fps:g} fps"
                )
            self.read += 1
            for index, clip in enumerate(cut_clips(video.frames, clip_frames)):
                yield name, f"{name}#clip{index}" if clip_frames else name, clip
