"""The video source: discovery, fps resampling, resize + center crop, clips, instructions, unreadable files.

Every input is written here with PyAV: a red 8x8 square on black whose left edge is at x = 16 + i in frame i,
so a frame's square position tells which source frame it is and where the crop fell.
"""

from pathlib import Path

import av
import numpy as np
import pytest
from loguru import logger
from pydantic import ValidationError
from typer.testing import CliRunner

from hlrp_lab.cli.main import app
from hlrp_lab.data.shards import read_episodes, read_manifest, shard_urls, verify_shards
from hlrp_lab.data.sources import DATA_SOURCES
from hlrp_lab.data.sources.videos import VideosConfig, VideoSource
from hlrp_lab.lib.errors import SpecError

RED = (220, 40, 30)
LOSSLESS_H264 = {"codec": "libx264", "pix_fmt": "yuv444p", "options": {"qp": "0"}}
VP8 = {"codec": "libvpx", "pix_fmt": "yuv420p", "options": {"crf": "4", "b": "2M"}}
FFV1 = {"codec": "ffv1", "pix_fmt": "yuv444p", "options": {}}
MPEG4 = {"codec": "mpeg4", "pix_fmt": "yuv420p", "options": {"qscale": "2"}}
READABLE = ["C_UPPER.MKV", "landscape.mp4", "slow.avi", "sub/deep/portrait.webm"]
UNREADABLE = ["broken/corrupt.mp4", "broken/empty.mkv", "one_frame.mp4"]

pytestmark = pytest.mark.skipif(
    not {"libx264", "libvpx", "ffv1", "mpeg4"} <= av.codecs_available, reason="PyAV lacks an encoder"
)


def square_frame(index: int, portrait: bool = False) -> np.ndarray:
    """96x64 (or 64x96) uint8 RGB: the square at x = 16 + index (y = 16 + index when portrait)."""
    frame = np.zeros((64, 96, 3), dtype=np.uint8)
    frame[28:36, 16 + index : 24 + index] = RED
    return frame.transpose(1, 0, 2).copy() if portrait else frame


def write_video(path: Path, count: int, rate: int, encoder: dict, portrait: bool = False, **open_args):
    """``count`` square frames at ``rate`` fps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", **open_args) as container:
        stream = container.add_stream(encoder["codec"], rate=rate)
        stream.width, stream.height = (64, 96) if portrait else (96, 64)
        stream.pix_fmt, stream.options = encoder["pix_fmt"], encoder["options"]
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(square_frame(index, portrait), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Four readable videos (one nested, one with an upper-case extension), three unreadable, two ignored."""
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "landscape.mp4", 50, 25, LOSSLESS_H264)  # 2 s
    write_video(root / "sub/deep/portrait.webm", 50, 25, VP8, portrait=True)  # 2 s
    write_video(root / "C_UPPER.MKV", 25, 25, FFV1, format="matroska")  # 1 s
    write_video(root / "slow.avi", 10, 5, MPEG4)  # 2 s at 5 fps
    write_video(root / "one_frame.mp4", 1, 25, LOSSLESS_H264)
    write_video(root / "ignored.mov", 50, 25, LOSSLESS_H264, format="mp4")
    (root / "broken").mkdir()
    (root / "broken/corrupt.mp4").write_text("this is not a video\n")
    (root / "broken/empty.mkv").write_bytes(b"")
    (root / "notes.txt").write_text("not a video either\n")
    return root


@pytest.fixture
def warnings() -> list[str]:
    messages: list[str] = []
    sink = logger.add(messages.append, level="WARNING", format="{message}")
    yield messages
    logger.remove(sink)


def source(root: Path, image_size: int = 32, **config) -> VideoSource:
    return VideoSource(VideosConfig(root=str(root), **config), image_size=image_size)


def lengths(source: VideoSource) -> dict[str, int]:
    return {episode.task: len(episode.frames) for episode in source.episodes()}


def square_centre(frame: np.ndarray) -> tuple[float, float]:
    """(x, y) pixel-index centroid of the red channel."""
    red = frame[..., 0].astype(np.float64)
    ys, xs = np.indices(red.shape)
    return (red * xs).sum() / red.sum(), (red * ys).sum() / red.sum()


def test_finds_videos_recursively_by_extension_in_sorted_order(root):
    videos = source(root)
    assert videos.names == sorted(READABLE + UNREADABLE)
    assert len(videos) == 7


def test_registered_under_videos(root):
    built = DATA_SOURCES.build({"name": "videos", "root": str(root)}, "data.source", image_size=32)
    assert isinstance(built, VideoSource) and built.config.fps == 10


@pytest.mark.parametrize(
    ("fps", "expected"),
    [
        (5, {"C_UPPER.MKV": 5, "landscape.mp4": 10, "slow.avi": 10, "sub/deep/portrait.webm": 10}),
        (10, {"C_UPPER.MKV": 10, "landscape.mp4": 20, "slow.avi": 20, "sub/deep/portrait.webm": 20}),
        (25, {"C_UPPER.MKV": 25, "landscape.mp4": 50, "slow.avi": 50, "sub/deep/portrait.webm": 50}),
        (3, {"C_UPPER.MKV": 3, "landscape.mp4": 6, "slow.avi": 6, "sub/deep/portrait.webm": 6}),
    ],
)
def test_resampled_frame_counts(root, fps, expected):
    assert lengths(source(root, fps=fps)) == expected


def test_episodes_are_square_uint8_frames_without_actions(root):
    episodes = list(source(root, image_size=24).episodes())
    assert [episode.seed for episode in episodes] == list(range(4))
    for episode in episodes:
        assert episode.frames.dtype == np.uint8 and episode.frames.shape[1:] == (24, 24, 3)
        assert episode.actions is None and episode.states is None and episode.success is None
        assert episode.scene == episode.task and episode.instruction == ""


@pytest.mark.parametrize(("image_size", "fps"), [(64, 5), (32, 5), (64, 3)])
def test_frame_selection_and_center_crop_put_the_square_where_expected(root, image_size, fps):
    """Output frame j is the last source frame at or before j / fps: source frame 25 j // fps (at 3 fps
    frame 16, at 0.64 s, for 0.667 s, not the nearer frame 17). The crop keeps the middle 64 of the 96 pixels
    of the long side: the square's centre, at 20 + i along it and 32 across, moves to 4 + i."""
    scale = image_size / 64
    episodes = {e.task: e for e in source(root, image_size=image_size, fps=fps).episodes()}
    for j, frame in enumerate(episodes["landscape.mp4"].frames):
        along, across = (4 + 25 * j // fps) * scale - 0.5, 32 * scale - 0.5
        assert square_centre(frame) == pytest.approx((along, across), abs=0.2)
        assert np.abs(frame[round(across), round(along)].astype(int) - RED).max() <= 6
    for j, frame in enumerate(episodes["sub/deep/portrait.webm"].frames):
        along, across = (4 + 25 * j // fps) * scale - 0.5, 32 * scale - 0.5
        assert square_centre(frame) == pytest.approx((across, along), abs=0.3)


def test_slow_video_repeats_each_frame(root):
    frames = next(e.frames for e in source(root, fps=10).episodes() if e.task == "slow.avi")
    assert len(frames) == 20
    assert np.array_equal(frames[0::2], frames[1::2])
    assert all(not np.array_equal(frames[i], frames[i + 2]) for i in range(0, 18, 2))


def test_clips_cut_consecutive_frames_and_drop_a_one_frame_tail(root):
    whole = {e.task: e.frames for e in source(root, fps=10).episodes()}
    clips = list(source(root, fps=10, clip_seconds=0.3).episodes())  # 3 frames a clip
    lengths = {e.task: len(e.frames) for e in clips}
    assert lengths["C_UPPER.MKV#clip2"] == 3 and "C_UPPER.MKV#clip3" not in lengths  # 10 = 3 + 3 + 3 + 1
    assert lengths["landscape.mp4#clip6"] == 2 and "landscape.mp4#clip7" not in lengths  # 20 = 6 * 3 + 2
    assert len(clips) == 3 + 7 + 7 + 7
    assert [e.seed for e in clips] == list(range(len(clips)))
    landscape = [e for e in clips if e.scene == "landscape.mp4"]
    assert np.array_equal(np.concatenate([e.frames for e in landscape]), whole["landscape.mp4"])


def test_clips_must_hold_two_frames():
    with pytest.raises(ValidationError, match="at least 2 frames"):
        VideosConfig(root=".", fps=10, clip_seconds=0.1)
    with pytest.raises(ValidationError):
        VideosConfig(root=".", frame_rate=10)


def instructions(root: Path, tmp_path: Path, rows: str) -> dict[str, str]:
    """Task -> instruction with an instruction file holding ``rows``."""
    csv_file = tmp_path / "instructions.csv"
    csv_file.write_text(f"file,instruction\n{rows}")
    return {e.task: e.instruction for e in source(root, instruction_file=str(csv_file)).episodes()}


def test_instructions_from_csv_by_relative_path_or_bare_name(root, tmp_path, warnings):
    rows = "portrait.webm,bare name\n./slow.avi, open the drawer \nmissing.mp4,nowhere\n"
    assert instructions(root, tmp_path, rows) == {
        "C_UPPER.MKV": "",
        "landscape.mp4": "",
        "slow.avi": "open the drawer",
        "sub/deep/portrait.webm": "bare name",
    }
    assert any("missing.mp4" in message for message in warnings)
    relative = instructions(root, tmp_path, f"{rows}sub/deep/portrait.webm,relative path wins\n")
    assert relative["sub/deep/portrait.webm"] == "relative path wins"


def test_instruction_file_needs_its_header(root, tmp_path):
    csv_file = tmp_path / "bad.csv"
    csv_file.write_text("name,text\nslow.avi,x\n")
    with pytest.raises(SpecError, match="file,instruction"):
        source(root, instruction_file=str(csv_file))
    with pytest.raises(SpecError, match="not a file"):
        source(root, instruction_file=str(tmp_path / "absent.csv"))


def test_unreadable_videos_are_skipped_and_named(root, warnings):
    videos = source(root)
    assert [e.task for e in videos.episodes()] == READABLE
    assert videos.read == 4
    assert videos.skipped == UNREADABLE
    for name in UNREADABLE:
        assert any(f"skipped {name}:" in message for message in warnings)


def test_missing_root_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="not a directory"):
        source(tmp_path / "absent")


# --- `hlrp-lab data videos` --------------------------------------------------------------------------------


def test_data_videos_writes_shards_and_names_the_unreadable_files(root, tmp_path):
    csv_file = tmp_path / "instructions.csv"
    csv_file.write_text("file,instruction\nslow.avi,open the drawer\n")
    out = tmp_path / "shards"
    args = ["data", "videos", str(root), str(out), "--fps", "10", "--size", "24", "--clip-seconds", "1"]
    result = CliRunner().invoke(app, [*args, "--instruction-file", str(csv_file)])
    assert result.exit_code == 0, result.output
    assert "wrote 7 episodes, 70 frames in 1 shards" in result.output  # 1 + 2 + 2 + 2 clips of 10 frames
    assert f"skipped 3 unreadable videos: {', '.join(UNREADABLE)}" in result.output
    manifest = read_manifest(out)
    assert manifest["source"] == "videos" and manifest["source_args"]["clip_seconds"] == 1
    assert manifest["image_size"] == 24 and "actions.npy" not in manifest["keys"]
    assert verify_shards(out) == []
    episodes = list(read_episodes(shard_urls(out)))
    assert [e.task for e in episodes][:3] == [
        "C_UPPER.MKV#clip0",
        "landscape.mp4#clip0",
        "landscape.mp4#clip1",
    ]
    assert {e.scene for e in episodes} == set(READABLE)
    assert {e.instruction for e in episodes if e.scene == "slow.avi"} == {"open the drawer"}
    assert all(e.frames.shape == (10, 24, 24, 3) for e in episodes)


def test_data_videos_fails_only_when_nothing_is_readable(tmp_path):
    src = tmp_path / "src"
    (src / "broken").mkdir(parents=True)
    (src / "broken/corrupt.mp4").write_text("not a video\n")
    write_video(src / "one_frame.mp4", 1, 25, LOSSLESS_H264)
    result = CliRunner().invoke(app, ["data", "videos", str(src), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "data videos: no episode could be read; nothing written" in result.output
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
