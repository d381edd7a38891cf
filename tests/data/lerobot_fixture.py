"""A small LeRobotDataset written to the format's documentation (the ``lerobot`` package does not install
beside the lab's pins): 3 episodes, 2 tasks, 2 cameras, a 2-D action and a 2-D state.

Each frame is a dark grey 64x64 image with an 8x8 square whose top-left corner is the state; the action
moves it, ``state[t + 1] = state[t] + action[t]``, so a frame's square says which frame of which episode it
is. The ``top`` camera draws the square red, the ``wrist`` camera blue and mirrored left-right.

v3.0: episodes 0 and 1 in ``data/chunk-000/file-000.parquet``, episode 2 in ``file-001.parquet``, and ONE mp4
per camera holding the 3 episodes back to back (keyframes every 8 frames, so an episode starts between two).
v2.1: one parquet and one mp4 per episode, ``meta/episodes.jsonl`` and ``meta/tasks.jsonl``.
"""

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

FPS = 10
SIZE = 64  # frame height and width
SQUARE = 8
LENGTHS = (15, 14, 18)  # frames of each episode
TASKS = ("push the square right", "push the square down and right")
EPISODE_TASK = (0, 1, 0)  # task_index of each episode
CAMERAS = {"observation.images.top": (230, 60, 40), "observation.images.wrist": (40, 60, 230)}
GREY = 40
V3_DATA_FILE = (0, 0, 1)  # file_index of each episode's rows
V3_DATA = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V2_DATA = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"


def actions(episode: int) -> np.ndarray:
    """float32 (T, 2): right by 1 or 2 pixels each step; task 1 also down by 1 (the last action moves the
    square past the episode's end)."""
    steps = np.arange(LENGTHS[episode])
    return np.stack([1 + (steps % 3 == 0), np.full_like(steps, EPISODE_TASK[episode])], 1).astype(np.float32)


def states(episode: int) -> np.ndarray:
    """float32 (T, 2): the square's top-left corner (x, y) in each frame."""
    start = np.array([4 + 2 * episode, 10 + 6 * episode], dtype=np.float32)
    return start + np.concatenate([np.zeros((1, 2), np.float32), np.cumsum(actions(episode)[:-1], 0)])


def square_centre(state: np.ndarray, camera: str) -> np.ndarray:
    """(x, y) of the square's centre drawn for ``state`` by ``camera``, in pixels of the 64x64 frame."""
    x, y = state + SQUARE / 2
    return np.array([SIZE - x if camera.endswith("wrist") else x, y])


def frame(state: np.ndarray, camera: str) -> np.ndarray:
    image = np.full((SIZE, SIZE, 3), GREY, dtype=np.uint8)
    x, y = (int(v) for v in state)
    if camera.endswith("wrist"):
        x = SIZE - SQUARE - x
    image[y : y + SQUARE, x : x + SQUARE] = CAMERAS[camera]
    return image


def encoder(codec: str) -> dict:
    """``h264``: lossless H.264 where PyAV has it, else MPEG-4; ``av1``: SVT-AV1 4:2:0, LeRobot's default."""
    if codec == "av1":
        return {
            "codec": "libsvtav1",
            "pix_fmt": "yuv420p",
            "options": {"crf": "20", "g": "8", "preset": "10"},
        }
    if "libx264" in av.codecs_available:
        return {"codec": "libx264", "pix_fmt": "yuv444p", "options": {"qp": "0", "g": "8"}}
    return {"codec": "mpeg4", "pix_fmt": "yuv420p", "options": {"qscale": "2", "g": "8"}}


def write_video(path: Path, episodes: list[int], camera: str, codec: str = "h264") -> None:
    """The episodes' frames back to back at FPS, keyframes every 8 frames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = encoder(codec)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(settings["codec"], rate=FPS)
        stream.width = stream.height = SIZE
        stream.pix_fmt, stream.options = settings["pix_fmt"], settings["options"]
        images = [frame(state, camera) for episode in episodes for state in states(episode)]
        for index, image in enumerate(images):
            video_frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            video_frame.pts, video_frame.time_base = index, Fraction(1, FPS)
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())


def rows(episodes: list[int]) -> pa.Table:
    """The frame rows of ``episodes`` as LeRobot stores them (``index`` counts over the whole dataset)."""
    first = [sum(LENGTHS[:episode]) for episode in episodes]
    columns: dict[str, list] = {key: [] for key in ("index", "episode_index", "frame_index", "task_index")}
    columns |= {"timestamp": [], "action": [], "observation.state": []}
    for episode, start in zip(episodes, first, strict=True):
        for t in range(LENGTHS[episode]):
            columns["index"].append(start + t)
            columns["episode_index"].append(episode)
            columns["frame_index"].append(t)
            columns["task_index"].append(EPISODE_TASK[episode])
            columns["timestamp"].append(t / FPS)
        columns["action"] += actions(episode).tolist()
        columns["observation.state"] += states(episode).tolist()
    types = {
        "timestamp": pa.float32(),
        "action": pa.list_(pa.float32()),
        "observation.state": pa.list_(pa.float32()),
    }
    return pa.table(
        {key: pa.array(values, type=types.get(key, pa.int64())) for key, values in columns.items()}
    )


def features() -> dict:
    video = {"dtype": "video", "shape": [SIZE, SIZE, 3], "names": ["height", "width", "channels"]}
    scalar = {"shape": [1], "names": None}
    return {
        **{camera: {**video, "info": {"video.fps": FPS, "video.codec": "h264"}} for camera in CAMERAS},
        "observation.state": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
        "action": {"dtype": "float32", "shape": [2], "names": ["dx", "dy"]},
        "timestamp": {"dtype": "float32", **scalar},
        **{
            key: {"dtype": "int64", **scalar}
            for key in ("frame_index", "episode_index", "index", "task_index")
        },
    }


def info(version: str, data_path: str, video_path: str) -> dict:
    return {
        "codebase_version": version,
        "robot_type": "square",
        "total_episodes": len(LENGTHS),
        "total_frames": sum(LENGTHS),
        "total_tasks": len(TASKS),
        "chunks_size": 1000,
        "fps": FPS,
        "splits": {"train": f"0:{len(LENGTHS)}"},
        "data_path": data_path,
        "video_path": video_path,
        "features": features(),
    }


def write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2))


def write_parquet(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def write_v3(root: Path, codec: str = "h264") -> Path:
    """The dataset in LeRobotDataset v3.0 format under ``root``, its videos in ``codec``; returns ``root``."""
    write_json(root / "meta/info.json", info("v3.0", V3_DATA, V3_VIDEO))
    tasks = pd.DataFrame({"task_index": range(len(TASKS))}, index=pd.Index(TASKS, name="task"))
    (root / "meta").mkdir(parents=True, exist_ok=True)
    tasks.to_parquet(root / "meta/tasks.parquet")
    for file_index in sorted(set(V3_DATA_FILE)):
        episodes = [e for e, f in enumerate(V3_DATA_FILE) if f == file_index]
        write_parquet(root / V3_DATA.format(chunk_index=0, file_index=file_index), rows(episodes))
    for camera in CAMERAS:
        path = root / V3_VIDEO.format(video_key=camera, chunk_index=0, file_index=0)
        write_video(path, [0, 1, 2], camera, codec)
    write_parquet(root / "meta/episodes/chunk-000/file-000.parquet", v3_episodes())
    return root


def v3_episodes() -> pa.Table:
    """meta/episodes: per episode its length, tasks, rows and the span of each camera's video."""
    ends = np.cumsum(LENGTHS).tolist()
    starts = [0, *ends[:-1]]
    columns = {
        "episode_index": list(range(len(LENGTHS))),
        "tasks": [[TASKS[task]] for task in EPISODE_TASK],
        "length": list(LENGTHS),
        "data/chunk_index": [0] * len(LENGTHS),
        "data/file_index": list(V3_DATA_FILE),
        "dataset_from_index": starts,
        "dataset_to_index": ends,
    }
    for camera in CAMERAS:
        columns[f"videos/{camera}/chunk_index"] = [0] * len(LENGTHS)
        columns[f"videos/{camera}/file_index"] = [0] * len(LENGTHS)
        columns[f"videos/{camera}/from_timestamp"] = [start / FPS for start in starts]
        columns[f"videos/{camera}/to_timestamp"] = [end / FPS for end in ends]
    columns["meta/episodes/chunk_index"] = [0] * len(LENGTHS)
    columns["meta/episodes/file_index"] = [0] * len(LENGTHS)
    return pa.table(columns)


def write_v21(root: Path) -> Path:
    """The dataset in LeRobotDataset v2.1 format (one parquet and one mp4 per episode) under ``root``."""
    write_json(root / "meta/info.json", info("v2.1", V2_DATA, V2_VIDEO) | {"total_chunks": 1})
    lines = [
        {"episode_index": e, "tasks": [TASKS[EPISODE_TASK[e]]], "length": n} for e, n in enumerate(LENGTHS)
    ]
    (root / "meta/episodes.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    tasks = [{"task_index": index, "task": task} for index, task in enumerate(TASKS)]
    (root / "meta/tasks.jsonl").write_text("".join(json.dumps(line) + "\n" for line in tasks))
    for episode in range(len(LENGTHS)):
        write_parquet(root / V2_DATA.format(episode_chunk=0, episode_index=episode), rows([episode]))
        for camera in CAMERAS:
            path = root / V2_VIDEO.format(episode_chunk=0, video_key=camera, episode_index=episode)
            write_video(path, [episode], camera)
    return root
