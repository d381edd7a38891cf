"""Data faults and bad data inputs (issue 12): missing shards, files the manifest does not list, a manifest
that is not JSON, truncated and absent videos, one log format, data that cannot be split into training and
validation scenes (caught before any run directory exists), data without the actions a stage needs, and
DataLoader workers that keep to one torch thread."""

import itertools
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from loguru import logger
from typer.testing import CliRunner

from hlrp_lab.cli.main import app
from hlrp_lab.data.dataset import check_data, check_readable, check_split, data_urls
from hlrp_lab.data.episode import Episode
from hlrp_lab.data.loader import FrameData, batches
from hlrp_lab.data.pairs import is_val_scene, scene_position
from hlrp_lab.data.shards import read_episodes, read_manifest, scene_lengths, shard_urls, write_shards
from hlrp_lab.data.sources.videos import VideosConfig, VideoSource
from hlrp_lab.lib.errors import RunError, SpecError
from hlrp_lab.lib.logger import setup_logger
from hlrp_lab.spec.check import check_spec
from hlrp_lab.stages.finetune import FinetuneStage
from tests.data.test_videos import LOSSLESS_H264, write_video

ROOT = Path(__file__).parents[2]
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \| (INFO   |WARNING) \| ", re.MULTILINE)
runner = CliRunner()


def lab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m hlrp_lab ARGS`` in a fresh process."""
    command = [sys.executable, "-m", "hlrp_lab", *args]
    return subprocess.run(command, cwd=cwd, check=False, capture_output=True, text=True, timeout=300)


@pytest.fixture
def messages() -> list[str]:
    """Every log message (WARNING and up) while the test runs."""
    found: list[str] = []
    sink = logger.add(lambda message: found.append(message.rstrip("\n")), level="WARNING", format="{message}")
    yield found
    logger.remove(sink)


def write_procedural(out: Path) -> None:
    args = ["data", "procedural", str(out), "--episodes", "6", "--episode-length", "5", "--size", "16"]
    result = runner.invoke(app, [*args, "--shard-size", "0.01"])
    assert result.exit_code == 0, result.output


def write_scenes(
    out: Path,
    scenes: list[str],
    length: int = 12,
    size: int = 16,
    actions: bool = True,
    shard_mb: float = 256,
) -> Path:
    """One episode per entry of ``scenes`` (clips of one video repeat its scene), ``length`` frames each, in
    shards of ``shard_mb``."""
    rng = np.random.default_rng(0)
    episodes = [
        Episode(
            frames=rng.integers(0, 255, (length, size, size, 3), dtype=np.uint8),
            instruction="",
            task=f"{scene}#clip{index}",
            seed=index,
            scene=scene,
            actions=rng.standard_normal((length - 1, 4)).astype(np.float32) if actions else None,
        )
        for index, scene in enumerate(scenes)
    ]
    write_shards(episodes, out, name="clips", source="videos", source_args={}, shard_size_mb=shard_mb)
    return out


def data_block(shards: Path, val_split: float, **extra) -> dict:
    spec = {
        "stage": "laq",
        "data": {"shards": str(shards), "image_size": 16, "val_split": val_split, **extra},
        "model": {
            "encoder": {"name": "CNNEncoder", "channels": [8]},
            "quantizer": {"name": "VectorQuantizer", "codebook_size": 4, "code_dim": 4, "num_tokens": 1},
            "decoder": {"name": "ViTDecoder", "patch_size": 8, "dim": 16, "depth": 1, "heads": 1},
        },
        "optim": {"name": "AdamW", "lr": 1e-3},
        "train": {"max_step": 2, "eval_frequency": 2, "log_frequency": 1},
    }
    return check_spec(spec)["data"]


# --- #7: a missing shard, files the manifest does not list, a broken manifest --------------------------------


def test_a_missing_shard_is_named_missing_not_corrupt(tmp_path, messages):
    write_scenes(tmp_path, ["a.mp4", "b.mp4", "c.mp4"], shard_mb=0.001)  # one episode per shard
    urls = shard_urls(tmp_path)
    Path(urls[0]).unlink()
    skipped: list[str] = []
    assert len(list(read_episodes(urls, skipped))) == 2
    assert skipped == [urls[0]]
    assert f"missing shard {urls[0]} (listed in manifest.json); skipping it" in messages
    assert not any("corrupt" in message for message in messages)


def test_no_readable_sample_counts_missing_shards_apart(tmp_path):
    write_procedural(tmp_path)
    urls = shard_urls(tmp_path)
    Path(urls[0]).unlink()
    for url in urls[1:]:
        Path(url).write_bytes(b"not a tar file" * 100)
    block = {"shards": None, "image_size": 16}
    with pytest.raises(RunError, match=rf"\({len(urls)} shards, {len(urls) - 1} corrupt, 1 missing\)$"):
        check_readable(urls, block)


def test_data_info_names_the_files_the_manifest_does_not_list(tmp_path):
    write_procedural(tmp_path)
    (tmp_path / "b.tar").write_bytes(b"stray")
    (tmp_path / "a.tar").write_bytes(b"stray")
    result = runner.invoke(app, ["data", "info", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "2 files not in manifest.json: a.tar, b.tar" in result.output
    assert "shards verified" in result.output


def test_data_info_says_nothing_of_unlisted_files_when_there_are_none(tmp_path):
    write_procedural(tmp_path)
    result = runner.invoke(app, ["data", "info", str(tmp_path)])
    assert result.exit_code == 0 and "not in manifest.json" not in result.output


@pytest.mark.parametrize("text", ["{not json", '{"format": 2}', "[1, 2]"])
def test_a_broken_manifest_is_a_one_line_spec_error(tmp_path, text):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(SpecError, match=r"manifest.json: .*write the shards again") as error:
        read_manifest(tmp_path)
    assert "\n" not in str(error.value)
    result = runner.invoke(app, ["data", "info", str(tmp_path)])
    assert result.exit_code == 2 and "error: " in result.output


# --- #10: truncated and absent videos, one log format --------------------------------------------------------


def write_truncated(path: Path, frames: int = 100) -> None:
    """An mp4 of ``frames`` frames with its index (moov atom) at the front, cut to its first half."""
    write_video(path, frames, 25, LOSSLESS_H264, options={"movflags": "faststart"})
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # the index really sits at the front
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_video_with_its_index_in_front_is_kept_with_a_warning(tmp_path, messages):
    write_truncated(tmp_path / "cut.mp4")
    write_video(tmp_path / "whole.mp4", 30, 25, LOSSLESS_H264, options={"movflags": "faststart"})
    source = VideoSource(VideosConfig(root=str(tmp_path), fps=25), image_size=16)
    lengths = {episode.task: len(episode.frames) for episode in source.episodes()}
    assert lengths["whole.mp4"] == 30 and 2 <= lengths["cut.mp4"] < 100
    [warning] = messages
    decoded = re.fullmatch(
        r"videos: cut\.mp4 ends early \(truncated\?\): decoded (\d+) of the 100 frames its container "
        r"declares; kept (\d+) frames at 25 fps",
        warning,
    )
    assert decoded and int(decoded[1]) < 100 and int(decoded[2]) == lengths["cut.mp4"]


@pytest.mark.parametrize("contents", [[], ["notes.txt", "clip.mov"]])
def test_a_folder_without_videos_says_so(tmp_path, contents):
    for name in contents:
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name).write_text("not a video\n")
    (tmp_path / "src").mkdir(exist_ok=True)
    result = runner.invoke(app, ["data", "videos", str(tmp_path / "src"), str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    expected = (
        f"error: videos: no video files found in {tmp_path / 'src'} (looked for .mp4, .webm, .mkv, .avi"
    )
    assert expected in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_data_command_warnings_use_the_info_lines_format(tmp_path):
    write_truncated(tmp_path / "src" / "cut.mp4")
    write_video(tmp_path / "src" / "whole.mp4", 30, 25, LOSSLESS_H264)
    result = lab("data", "videos", str(tmp_path / "src"), str(tmp_path / "out"), "--size", "16", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "videos: cut.mp4 ends early" in line]
    assert lines and all(LOG_LINE.search(line) for line in lines), result.stderr


def test_python_warnings_go_through_the_log_format(monkeypatch):
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # restored after the test
    found: list[str] = []
    setup_logger()
    sink = logger.add(
        found.append, level="WARNING", format="{time:YYYY-MM-DD HH:mm:ss} | {level: <7} | {message}"
    )
    try:
        warnings.warn("an old knob", UserWarning, stacklevel=1)
    finally:
        logger.remove(sink)
    assert len(found) == 1 and LOG_LINE.match(found[0])
    assert "UserWarning: an old knob (" in found[0]


# --- #8: data that cannot be split into training and validation scenes ---------------------------------------


def test_clips_of_one_video_cannot_be_split_and_the_error_says_what_works(tmp_path):
    shards = write_scenes(tmp_path, ["walk.mp4"] * 4)
    data = data_block(shards, 0.05)
    with pytest.raises(SpecError, match="has 1 scene .*clips of one video share its scene.*val_split=0"):
        check_data(data_urls(data), data)
    check_data(data_urls(data), {**data, "val_split": 0.0})  # evaluating on training pairs works


def suggested_split(error: SpecError) -> float:
    return float(re.search(r"-s data\.val_split=([0-9.e-]+), which", str(error))[1])


@pytest.mark.parametrize("pairs", ["pair", "scene"])
def test_a_split_holding_out_no_scene_names_one_that_trains(tmp_path, pairs):
    scenes = ["kitchen.mp4", "garden.mp4", "street.mp4"]
    shards = write_scenes(tmp_path, [scene for scene in scenes for _ in range(2)])
    low = min(scenes, key=scene_position)
    data = data_block(shards, 1e-9, pairs=pairs, num_workers=0, val_pairs=8, batch_size=4)
    assert not any(is_val_scene(scene, data["val_split"]) for scene in scenes)
    with pytest.raises(SpecError, match=r"holds out none of the 3 scenes") as error:
        check_split(data_urls(data), data)
    assert "\n" not in str(error.value)
    fix = suggested_split(error.value)
    assert is_val_scene(low, fix) and not all(is_val_scene(scene, fix) for scene in scenes)
    fixed = {**data, "val_split": fix}
    check_split(data_urls(fixed), fixed)
    frames = FrameData(data_urls(fixed), fixed, {"eval_frequency": 2, "grad_accum": 1}, 0, probe_pairs=4)
    assert len(frames.val["frame_t"]) > 0 and len(frames.train_batch(0)["frame_t"]) == 4


def test_a_split_holding_out_every_scene_names_one_that_keeps_training_scenes(tmp_path):
    scenes = ["kitchen.mp4", "garden.mp4"]
    shards = write_scenes(tmp_path, scenes)
    data = data_block(shards, 0.999999)
    with pytest.raises(SpecError, match=r"holds out all of the 2 scenes") as error:
        check_split(data_urls(data), data)
    fix = suggested_split(error.value)
    assert sum(is_val_scene(scene, fix) for scene in scenes) == 1


def test_scenes_too_short_for_the_offsets_are_a_spec_error(tmp_path):
    shards = write_scenes(tmp_path, ["a.mp4", "b.mp4"], length=4)
    data = data_block(shards, 0.5, offsets=[4])
    with pytest.raises(SpecError, match=r"data.offsets: \[4\], but no scene .* has more than 4 frames"):
        check_split(data_urls(data), data)


def test_scene_lengths_come_from_the_shards_without_their_frames(tmp_path):
    write_scenes(tmp_path, ["a.mp4", "a.mp4", "b.mp4"], length=7)
    assert scene_lengths(shard_urls(tmp_path)) == {"a.mp4": 7, "b.mp4": 7}


@pytest.mark.slow
def test_user_video_with_too_few_scenes_fails_before_the_run_directory(tmp_path):
    """The README's video spec on 4 clips of one video: exit 2, a one-line error, no run directory."""
    shards = write_scenes(tmp_path / "shards", ["walk.mp4"] * 4, length=12, size=128, actions=False)
    command = ["run", str(ROOT / "specs/laq.json"), "laq_videos", "dev", "-s", f"shards={shards}"]
    result = lab(*command, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert "data.val_split" in error and "-s data.val_split=0" in error
    assert not list((tmp_path / "data").glob("laq_videos*"))


def test_finetuning_data_without_actions_is_refused_before_training(tmp_path):
    shards = write_scenes(tmp_path, ["a.mp4", "b.mp4", "c.mp4", "d.mp4"], size=64, actions=False)
    specs = json.loads((ROOT / "specs/finetune.json").read_text())
    name = next(name for name, spec in specs.items() if spec["train"].get("init_from") is None)
    spec = specs[name]
    spec["data"].update(shards=str(shards), source=None, val_split=0.5)
    spec["train"].update(eval_rollouts=0)
    with pytest.raises(SpecError, match="has no actions to finetune on"):
        FinetuneStage.prepare_data(check_spec(spec))


# --- #12: DataLoader workers keep to one torch thread ---------------------------------------------------------


def test_dataloader_workers_use_one_torch_thread():
    """A guard: torch's worker loop sets one intra-op thread; nothing in the lab's loader may undo it."""

    def threads():
        while True:
            yield {"threads": torch.get_num_threads()}

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        stream = batches(wds.DataPipeline(threads), num_workers=2)
        assert {sample["threads"] for sample in itertools.islice(stream, 4)} == {1}
    finally:
        torch.set_num_threads(before)
