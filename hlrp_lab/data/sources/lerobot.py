"""LeRobot datasets: a LeRobotDataset (format v3.x, or v2.x) from a local folder or the Hub, by episode.

Read (v3.x): ``meta/info.json`` (codebase_version, fps, features, the data_path and video_path templates),
``meta/tasks.parquet`` (task text and task_index), ``meta/episodes/*/*.parquet`` (per episode: length, the
chunk and file index of its rows and, per camera, of its mp4 and its span ``[from_timestamp, to_timestamp)``
in it), ``data/*/*.parquet`` (a row per frame: episode_index, frame_index, timestamp, task_index, action,
observation.state) and ``videos/CAMERA/*/*.mp4`` (many episodes back to back). v2.x keeps one parquet and one
mp4 per episode (info.json's templates with episode_chunk and episode_index), ``meta/episodes.jsonl`` and
``meta/tasks.jsonl``; its episode spans the whole mp4.

Frames: PyAV seeks the camera's mp4 to the keyframe before the episode and decodes the frames shown within
half a frame period of its span. There must be one per row, each within half a frame period of its row's
``from_timestamp + timestamp``; otherwise the error names the episode and both counts or times. Frames are
scaled so their short side is ``image_size`` and center-cropped, as in the videos source.

Episodes: ``observation.state`` as the states (T, S); ``action`` as the actions (T-1, A): LeRobot's action t
is taken at frame t, so the last row's, which leads past the episode, is dropped. A dataset without either
gives episodes without it. The task of the first frame is the instruction (and the task),
``episode_index`` the seed, ``episode_NNNNNN`` the scene.

Hub: a ``path`` that is not an existing folder and reads ``owner/name`` is a dataset repo id. huggingface_hub
downloads ``meta/`` into its cache, then, at the same commit, only the data and video files of the chosen
episodes and camera. Offline (``HF_HUB_OFFLINE=1``) or without a network what the cache holds is used; if it
lacks the files, the error names the repo id.
"""

import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hlrp_lab.data.episode import Episode
from hlrp_lab.data.sources import DATA_SOURCES
from hlrp_lab.data.sources.config import LeRobotConfig
from hlrp_lab.data.sources.videos import square_rgb, timed_frames
from hlrp_lab.lib.errors import RunError, SpecError, first_line

if TYPE_CHECKING:
    import pyarrow as pa

INFO = "meta/info.json"
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
ACTION, STATE = "action", "observation.state"
ROW_COLUMNS = ["episode_index", "frame_index", "timestamp", "task_index"]
CONVERT = (
    "lerobot's scripts convert older ones; v2.1 to v3.0: python -m lerobot.scripts.convert_dataset_v21_to_v30"
)


@dataclass(frozen=True)
class EpisodeFiles:
    """Where an episode lives: its rows' parquet and its camera's mp4 (relative to the dataset's root), and
    its span in that mp4 in seconds."""

    index: int
    length: int
    data: str
    video: str
    start: float
    end: float


def is_repo_id(path: str) -> bool:
    """``owner/name`` that is not a local path."""
    return REPO_ID.fullmatch(path) is not None and not Path(path).exists()


def download(repo_id: str, revision: str | None, patterns: list[str], required: list[str]) -> Path:
    """The cached snapshot of dataset ``repo_id`` at ``revision`` with the files matching ``patterns``;
    RunError unless it holds the ``required`` files (offline, a snapshot is what the cache holds)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
    try:
        folder = api.snapshot_download(
            repo_id, repo_type="dataset", revision=revision, allow_patterns=patterns
        )
    except LocalEntryNotFoundError:
        raise RunError(
            f"lerobot: cannot download the dataset {repo_id} (HF_HUB_OFFLINE is set or there is no network) "
            f"and the Hugging Face cache lacks the files needed; download it first (hf download {repo_id} "
            "--repo-type dataset) or pass a local dataset folder"
        ) from None
    except RevisionNotFoundError:
        raise SpecError(f"lerobot.revision: the dataset {repo_id} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise SpecError(
            f"lerobot.path: {repo_id} is neither a local folder nor a dataset repo on the Hub (a private or "
            "gated one needs HF_TOKEN)"
        ) from None
    except HfHubHTTPError as err:
        raise RunError(f"lerobot: downloading {repo_id} failed: {first_line(err)}") from None
    except HFValidationError as err:
        raise SpecError(
            f"lerobot.path: {repo_id!r} is not a local folder nor a valid repo id ({first_line(err)})"
        ) from None
    if missing := [file for file in required if not (Path(folder) / file).is_file()]:
        raise RunError(
            f"lerobot: {repo_id} has no {missing[0]} in the Hugging Face cache, and it could not be "
            "downloaded (offline, no network, or not in the repo); download the dataset first (hf download "
            f"{repo_id} --repo-type dataset) or pass a local dataset folder"
        )
    return Path(folder)


def local_root(config: LeRobotConfig) -> Path:
    """The dataset folder ``config.path``; SpecError unless it holds ``meta/info.json``."""
    root = Path(config.path)
    if not root.is_dir():
        raise SpecError(f"lerobot.path: {config.path} is neither a local folder nor a Hub repo id owner/name")
    if config.revision is not None:
        raise SpecError(f"lerobot.revision: applies to a Hub repo id, and {config.path} is a local folder")
    if not (root / INFO).is_file():
        raise SpecError(
            f"lerobot.path: {config.path} has no {INFO}; give the dataset's root (the folder holding meta/)"
        )
    return root


def read_info(root: Path, where: str) -> dict[str, Any]:
    """``meta/info.json``; SpecError for a format version other than 2.x or 3.x."""
    try:
        info = json.loads((root / INFO).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunError(f"lerobot: {where}/{INFO} is not valid JSON ({err})") from None
    version = str(info.get("codebase_version", "without a codebase_version"))
    if major_version(info) not in ("2", "3"):
        raise SpecError(
            f"lerobot.path: {where} is LeRobotDataset {version}; this lab reads v3.x and v2.x ({CONVERT})"
        )
    missing = [key for key in ("fps", "features", "data_path", "video_path") if key not in info]
    if missing:
        raise RunError(f"lerobot: {where}/{INFO} lacks {', '.join(missing)}")
    return info


def major_version(info: dict[str, Any]) -> str:
    """ "3" of codebase_version "v3.0"."""
    return str(info.get("codebase_version", "")).removeprefix("v").split(".")[0]


def pick_camera(features: dict[str, dict], camera: str | None, where: str) -> str:
    """``camera``, else the first video feature; SpecError listing the video features if it is not one."""
    videos = [key for key, feature in features.items() if feature.get("dtype") == "video"]
    if not videos:
        images = [key for key, feature in features.items() if feature.get("dtype") == "image"]
        stored = f" (its cameras {', '.join(images)} are stored as images)" if images else ""
        raise SpecError(
            f"lerobot.camera: {where} has no video feature{stored}; this source reads mp4 cameras"
        )
    if camera is None:
        return videos[0]
    if camera not in videos:
        raise SpecError(
            f"lerobot.camera: {where} has no video feature {camera!r}; available: {', '.join(videos)}"
        )
    return camera


def v3_episode_files(root: Path, info: dict[str, Any], camera: str) -> list[EpisodeFiles]:
    """Every episode's files, from ``meta/episodes/*/*.parquet``."""
    video = f"videos/{camera}/"
    spans = ["chunk_index", "file_index", "from_timestamp", "to_timestamp"]
    columns = [
        "episode_index",
        "length",
        "data/chunk_index",
        "data/file_index",
        *(video + key for key in spans),
    ]
    paths = sorted((root / "meta/episodes").glob("*/*.parquet"))
    if not paths:
        raise RunError(f"lerobot: {root} has no meta/episodes/*/*.parquet")
    files = []
    for path in paths:
        for row in read_parquet(root, path.relative_to(root).as_posix(), columns).to_pylist():
            data = {"chunk_index": row["data/chunk_index"], "file_index": row["data/file_index"]}
            mp4 = {
                "video_key": camera,
                "chunk_index": row[video + "chunk_index"],
                "file_index": row[video + "file_index"],
            }
            files.append(
                EpisodeFiles(
                    index=row["episode_index"],
                    length=row["length"],
                    data=info["data_path"].format(**data),
                    video=info["video_path"].format(**mp4),
                    start=row[video + "from_timestamp"],
                    end=row[video + "to_timestamp"],
                )
            )
    return files


def v2_episode_files(root: Path, info: dict[str, Any], camera: str) -> list[EpisodeFiles]:
    """Every episode's files, from ``meta/episodes.jsonl`` and info.json's templates (a file per episode)."""
    files = []
    for row in read_jsonl(root / "meta/episodes.jsonl"):
        index, length = row["episode_index"], row["length"]
        names = {
            "episode_chunk": index // info.get("chunks_size", 1000),
            "episode_index": index,
            "video_key": camera,
        }
        data, video = info["data_path"].format(**names), info["video_path"].format(**names)
        files.append(EpisodeFiles(index, length, data, video, 0.0, length / info["fps"]))
    return files


def read_parquet(root: Path, path: str, columns: list[str] | None = None) -> "pa.Table":
    """The ``columns`` of the parquet file ``root / path``; RunError if it is missing or lacks one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not (root / path).is_file():
        raise RunError(f"lerobot: {path} is missing from {root}; download the dataset again")
    try:
        return pq.read_table(root / path, columns=columns)
    except (pa.ArrowInvalid, KeyError) as err:
        raise RunError(f"lerobot: {path} in {root}: {first_line(err)}") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSON Lines file; RunError if it is missing or not JSON Lines."""
    if not path.is_file():
        raise RunError(f"lerobot: {path} is missing; download the dataset again")
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunError(f"lerobot: {path} is not JSON Lines ({err})") from None


def read_tasks(root: Path, v3: bool) -> dict[int, str]:
    """task_index -> task text, from ``meta/tasks.parquet`` (v3: the text is its pandas index) or
    ``meta/tasks.jsonl`` (v2)."""
    if not v3:
        return {row["task_index"]: row["task"] for row in read_jsonl(root / "meta/tasks.jsonl")}
    table = read_parquet(root, "meta/tasks.parquet")
    text = "task" if "task" in table.column_names else "__index_level_0__"
    return dict(zip(table["task_index"].to_pylist(), table[text].to_pylist(), strict=True))


def select(files: list[EpisodeFiles], episodes: list[int] | None, where: str) -> list[EpisodeFiles]:
    """The files of ``episodes`` (all if None), by episode index; SpecError naming those the dataset lacks."""
    by_index = {episode.index: episode for episode in files}
    if episodes is None:
        return [by_index[index] for index in sorted(by_index)]
    if missing := [index for index in episodes if index not in by_index]:
        raise SpecError(
            f"lerobot.episodes: {where} has no episode {', '.join(map(str, missing))} (it has "
            f"{len(by_index)} episodes, indices {min(by_index)} to {max(by_index)})"
        )
    return [by_index[index] for index in episodes]


def float_rows(column: "pa.ChunkedArray") -> np.ndarray:
    """float32 (N, D) of a column of N vectors (or N numbers)."""
    import pyarrow as pa

    values = column.combine_chunks()
    nested = pa.types.is_list(values.type) or pa.types.is_large_list(values.type)
    flat = values.flatten() if nested or pa.types.is_fixed_size_list(values.type) else values
    return np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(values), -1)


class DataFiles:
    """The rows of one parquet file at a time: episodes come in file order, so each file is read once."""

    def __init__(self, root: Path, columns: list[str]):
        self.root, self.columns = root, columns
        self.path: str | None = None
        self.table: pa.Table | None = None

    def rows(self, episode: EpisodeFiles) -> "pa.Table":
        """The episode's rows by frame_index; RunError unless there are ``episode.length``."""
        import pyarrow.compute as pc

        if episode.data != self.path:
            self.table, self.path = read_parquet(self.root, episode.data, self.columns), episode.data
        rows = self.table.filter(pc.equal(self.table["episode_index"], episode.index)).sort_by("frame_index")
        if rows.num_rows != episode.length:
            raise RunError(
                f"lerobot: episode {episode.index} has {rows.num_rows} rows in {episode.data}, but meta/ "
                f"gives its length as {episode.length}"
            )
        return rows


def decode_span(
    path: Path, start: float, end: float, fps: float, size: int
) -> tuple[list[np.ndarray], list[float]]:
    """The frames of the mp4 at ``path`` shown in ``[start, end)`` seconds (to within half a frame period), as
    ``size`` squares, and their times in seconds from ``start``."""
    import av  # here, not at the top: listing the data sources must not need PyAV

    half = 0.5 / fps
    frames, times = [], []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise RunError(f"lerobot: {path} has no video stream")
            stream = container.streams.video[0]
            container.seek(
                max(0, math.floor((start - half) / stream.time_base)), stream=stream, backward=True
            )
            for frame, time in timed_frames(container):
                if time >= end - half:
                    break
                if time >= start - half:
                    frames.append(square_rgb(frame, size))
                    times.append(float(time) - start)
    except av.FFmpegError as err:
        raise RunError(f"lerobot: cannot decode {path}: {err.strerror or err}") from None
    return frames, times


@DATA_SOURCES.register_as("lerobot")
class LeRobotSource:
    """A LeRobotDataset: one camera's frames, actions, states and the task as the instruction."""

    Config = LeRobotConfig

    def __init__(self, config: LeRobotConfig, *, image_size: int):
        self.config = config
        self.image_size = image_size
        self.repo_id = config.path if is_repo_id(config.path) else None
        root = (
            download(self.repo_id, config.revision, ["meta/*"], [INFO])
            if self.repo_id
            else local_root(config)
        )
        info = read_info(root, config.path)
        self.fps = float(info["fps"])
        self.camera = pick_camera(info["features"], config.camera, config.path)
        self.v3 = major_version(info) == "3"
        listed = (v3_episode_files if self.v3 else v2_episode_files)(root, info, self.camera)
        self.files = select(listed, config.episodes, config.path)
        if self.repo_id:  # the chosen episodes' files, at the commit meta/ came from
            needed = sorted({f.data for f in self.files} | {f.video for f in self.files})
            root = download(self.repo_id, root.name, needed, needed)
        self.root = root
        self.tasks = read_tasks(root, self.v3)
        self.arrays = [key for key in (ACTION, STATE) if key in info["features"]]
        self.manifest_extra = {
            "lerobot": {
                "dataset": config.path,
                "commit": root.name if self.repo_id else None,
                "codebase_version": info["codebase_version"],
                "robot_type": info.get("robot_type"),
                "fps": self.fps,
                "camera": self.camera,
            }
        }

    def __len__(self) -> int:
        return len(self.files)

    def episodes(self) -> Iterator[Episode]:
        data = DataFiles(self.root, ROW_COLUMNS + self.arrays)
        for files in self.files:
            yield self.episode(files, data.rows(files))

    def episode(self, files: EpisodeFiles, rows: "pa.Table") -> Episode:
        frames = self.frames(files, np.asarray(rows["timestamp"].to_numpy(), dtype=np.float64))
        task_index = rows["task_index"][0].as_py()
        if task_index not in self.tasks:
            raise RunError(f"lerobot: episode {files.index} has task_index {task_index}, which no task has")
        arrays = {key: float_rows(rows[key]) for key in self.arrays}
        return Episode(
            frames=frames,
            instruction=self.tasks[task_index],
            task=self.tasks[task_index],
            seed=files.index,
            actions=arrays[ACTION][:-1] if ACTION in arrays else None,
            states=arrays.get(STATE),
            scene=f"episode_{files.index:06d}",
        )

    def frames(self, files: EpisodeFiles, timestamps: np.ndarray) -> np.ndarray:
        """uint8 (T, size, size, 3): a frame per row; RunError unless the video shows one per row, in time."""
        path = self.root / files.video
        if not path.is_file():
            raise RunError(f"lerobot: {files.video} is missing from {self.root}; download the dataset again")
        frames, times = decode_span(path, files.start, files.end, self.fps, self.image_size)
        where = f"episode {files.index} ({files.video}, {files.start:.3f} s to {files.end:.3f} s)"
        if len(frames) != files.length:
            raise RunError(
                f"lerobot: {where} shows {len(frames)} frames at {self.fps:g} fps, but the episode has "
                f"{files.length} rows"
            )
        late = np.abs(np.asarray(times) - timestamps)
        if late[worst := int(late.argmax())] > 0.5 / self.fps:
            raise RunError(
                f"lerobot: {where}: frame {worst} is shown at {times[worst]:.3f} s, but its row's timestamp "
                f"is {timestamps[worst]:.3f} s"
            )
        return np.stack(frames)
