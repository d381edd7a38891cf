"""The lerobot source: LeRobotDataset v3.0 and v2.1 folders and Hub repos (a fake Hub) to shards, and the
runs that train on them. The datasets are written by ``tests/data/lerobot_fixture.py``: a square moved by the
actions, so each decoded frame tells which frame of which episode it is."""

import json
import shutil
from pathlib import Path

import av
import huggingface_hub
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from huggingface_hub import HfApi
from pydantic import ValidationError
from typer.testing import CliRunner

from hlrp_lab.cli.main import app
from hlrp_lab.data.dataset import data_urls, write_dataset
from hlrp_lab.data.episode import Episode
from hlrp_lab.data.shards import read_episodes, read_manifest, shard_urls
from hlrp_lab.data.sources import DATA_SOURCES
from hlrp_lab.data.sources.config import LeRobotConfig
from hlrp_lab.data.sources.lerobot import LeRobotSource
from hlrp_lab.experiment.lab import run_lab
from hlrp_lab.lib.errors import RunError, SpecError
from hlrp_lab.spec.check import check_spec
from hlrp_lab.spec.spec_util import Mode
from tests.conftest import tiny_spec_dict
from tests.data import lerobot_fixture as fixture

ROOT = Path(__file__).parents[2]
TOP, WRIST = fixture.CAMERAS
SIZE = 32  # converted frames: half the fixture's 64 pixels


@pytest.fixture(scope="module")
def v3(tmp_path_factory) -> Path:
    return fixture.write_v3(tmp_path_factory.mktemp("lerobot") / "squares")


def build(path: Path | str, **config) -> LeRobotSource:
    return DATA_SOURCES.build(
        {"name": "lerobot", "path": str(path), **config}, "data.source", image_size=SIZE
    )


def centre(frame: np.ndarray) -> np.ndarray:
    """(x, y) of the square in a converted frame, in pixels of the fixture's 64x64 frame: the centroid of how
    far each pixel is from the background."""
    weight = np.clip(np.abs(frame.astype(float) - fixture.GREY).sum(-1) - 30, 0, None)
    ys, xs = np.indices(weight.shape)
    return (np.array([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum() + 0.5) * fixture.SIZE / SIZE


def check_episode(episode: Episode, index: int, camera: str = TOP) -> None:
    """Frames, actions, states, task and scene of ``episode`` are those of fixture episode ``index``: each
    frame's square within half a pixel of where its state puts it (a step moves it a pixel or more)."""
    states = fixture.states(index)
    assert (
        episode.frames.shape == (fixture.LENGTHS[index], SIZE, SIZE, 3) and episode.frames.dtype == np.uint8
    )
    for frame, state in zip(episode.frames, states, strict=True):
        assert centre(frame) == pytest.approx(fixture.square_centre(state, camera), abs=0.5)
    assert np.array_equal(episode.states, states) and episode.states.dtype == np.float32
    assert (
        np.array_equal(episode.actions, fixture.actions(index)[:-1]) and episode.actions.dtype == np.float32
    )
    assert episode.instruction == episode.task == fixture.TASKS[fixture.EPISODE_TASK[index]]
    assert episode.seed == index and episode.scene == f"episode_{index:06d}"


def test_a_v3_dataset_converts_to_shards_with_frames_actions_states_and_tasks(v3, tmp_path):
    manifest, _ = write_dataset(
        {"name": "lerobot", "path": str(v3)},
        tmp_path / "out",
        image_size=SIZE,
        name="squares",
        shard_size_mb=1,
        overwrite=False,
    )
    assert manifest["num_episodes"] == 3 and manifest["num_frames"] == sum(fixture.LENGTHS)
    assert manifest["instructions"] == sorted(fixture.TASKS)
    assert manifest["lerobot"] == {
        "dataset": str(v3),
        "commit": None,
        "codebase_version": "v3.0",
        "robot_type": "square",
        "fps": fixture.FPS,
        "camera": TOP,
    }
    episodes = list(read_episodes(shard_urls(tmp_path / "out")))
    for index, episode in enumerate(episodes):
        check_episode(episode, index)


def test_the_cli_picks_episodes_and_a_camera(v3, tmp_path):
    args = ["data", "lerobot", str(v3), str(tmp_path / "out"), "--episodes", "2", "--episodes", "0"]
    result = CliRunner().invoke(app, [*args, "--camera", WRIST, "--size", str(SIZE)])
    assert result.exit_code == 0, result.output
    assert "wrote 2 episodes, 33 frames in 1 shards" in result.output
    manifest = read_manifest(tmp_path / "out")
    assert manifest["source_args"]["episodes"] == [0, 2] and manifest["lerobot"]["camera"] == WRIST
    first, last = read_episodes(shard_urls(tmp_path / "out"))
    check_episode(first, 0, WRIST)
    check_episode(last, 2, WRIST)
    command = typer.main.get_command(app).commands["data"].commands["lerobot"]
    options = {param.name: param for param in command.params if param.param_type_name == "option"}
    assert {"revision", "episodes", "camera"} <= set(options) and "path" not in options
    assert options["episodes"].help.endswith("Repeat the option for several: --episodes A --episodes B.")


def test_a_v21_dataset_converts(tmp_path):
    root = fixture.write_v21(tmp_path / "v21")
    source = build(root, episodes=[1, 2])
    assert source.manifest_extra["lerobot"]["codebase_version"] == "v2.1" and len(source) == 2
    for index, episode in zip([1, 2], source.episodes(), strict=True):
        check_episode(episode, index)


@pytest.mark.skipif(not {"libsvtav1", "libdav1d"} <= av.codecs_available, reason="PyAV lacks AV1")
def test_av1_videos_decode(tmp_path):
    """AV1, LeRobot's default codec (lossy 4:2:0 here: the square's colour blurs a little at its edges)."""
    source = build(fixture.write_v3(tmp_path / "av1", codec="av1"), episodes=[1])
    check_episode(next(source.episodes()), 1)


def test_a_spec_names_the_source_and_its_shards_are_cached(v3, tmp_path):
    spec = tiny_spec_dict(tmp_path / "cache")
    spec["data"]["source"] = {"name": "lerobot", "path": str(v3), "episodes": [1]}
    urls = data_urls(check_spec(spec)["data"])
    assert [episode.seed for episode in read_episodes(urls)] == [1]
    assert read_manifest(Path(urls[0]).parent)["lerobot"]["camera"] == TOP
    with pytest.raises(ValidationError, match="listed twice"):
        LeRobotConfig(path="x", episodes=[1, 1])
    with pytest.raises(ValidationError, match="0 or more"):
        LeRobotConfig(path="x", episodes=[-1])


def test_bad_camera_episodes_path_and_version_are_one_line_errors(v3, tmp_path):
    with pytest.raises(SpecError, match=f"no video feature 'front'; available: {TOP}, {WRIST}$"):
        build(v3, camera="front")
    with pytest.raises(SpecError, match=r"has no episode 3, 7 \(it has 3 episodes, indices 0 to 2\)"):
        build(v3, episodes=[0, 3, 7])
    with pytest.raises(SpecError, match="has no meta/info.json; give the dataset's root"):
        build(v3 / "meta")
    with pytest.raises(SpecError, match="is neither a local folder nor a Hub repo id owner/name"):
        build(tmp_path / "absent")
    with pytest.raises(SpecError, match="'a--b/c' is not a local folder nor a valid repo id"):
        build("a--b/c")  # the Hub's rules, checked before any request
    with pytest.raises(SpecError, match="lerobot.revision: applies to a Hub repo id"):
        build(v3, revision="main")
    old = tmp_path / "old"
    shutil.copytree(v3 / "meta", old / "meta")
    info = json.loads((old / "meta/info.json").read_text())
    (old / "meta/info.json").write_text(json.dumps(info | {"codebase_version": "v1.6"}))
    with pytest.raises(
        SpecError, match=r"is LeRobotDataset v1.6; this lab reads v3.x and v2.x \(lerobot's scripts convert"
    ):
        build(old)


def broken_copy(v3: Path, tmp_path: Path, path: str, change: dict[str, list]) -> Path:
    """A copy of the dataset whose parquet file ``path`` has the columns in ``change`` replaced."""
    root = tmp_path / "broken"
    shutil.copytree(v3, root)
    table = pq.read_table(root / path)
    for column, values in change.items():
        table = table.set_column(table.column_names.index(column), column, pa.array(values))
    pq.write_table(table, root / path)
    return root


def test_a_video_that_does_not_match_the_rows_is_an_error(v3, tmp_path):
    ends = [(sum(fixture.LENGTHS[: i + 1]) - 2 * (i == 1)) / fixture.FPS for i in range(3)]  # episode 1 short
    root = broken_copy(
        v3, tmp_path, "meta/episodes/chunk-000/file-000.parquet", {f"videos/{TOP}/to_timestamp": ends}
    )
    with pytest.raises(
        RunError,
        match=r"episode 1 \(.*1.500 s to 2.700 s\) shows 12 frames at 10 fps, but the episode has 14 rows",
    ):
        list(build(root, episodes=[1]).episodes())
    late = np.arange(fixture.LENGTHS[2], dtype=np.float32) / fixture.FPS
    late[0] += 0.1  # frame 0's row says 0.1 s: a frame period late
    root = broken_copy(v3, tmp_path / "late", "data/chunk-000/file-001.parquet", {"timestamp": late})
    with pytest.raises(
        RunError, match="episode 2 .*: frame 0 is shown at 0.000 s, but its row's timestamp is 0.100 s"
    ):
        list(build(root, episodes=[2]).episodes())


def test_a_repo_id_downloads_the_chosen_files_and_then_works_offline(v3, fake_hub, monkeypatch):
    api = HfApi(endpoint=fake_hub.url, token="fake")
    api.create_repo("owner/squares", repo_type="dataset")
    api.upload_folder(folder_path=str(v3), repo_id="owner/squares", repo_type="dataset")
    source = build("owner/squares", episodes=[2])
    check_episode(next(source.episodes()), 2)
    commit = fake_hub.repo("dataset", "owner/squares").branches["main"]
    assert source.manifest_extra["lerobot"]["commit"] == commit
    resolve = f"/datasets/owner/squares/resolve/{commit}/"
    downloaded = {path.removeprefix(resolve) for verb, path in fake_hub.requests if resolve in path}
    assert downloaded == {
        "meta/info.json",
        "meta/tasks.parquet",
        "meta/episodes/chunk-000/file-000.parquet",
        "data/chunk-000/file-001.parquet",
        f"videos/{TOP}/chunk-000/file-000.mp4",
    }
    requests = len(fake_hub.requests)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    check_episode(next(build("owner/squares", episodes=[2]).episodes()), 2)  # from the cache
    with pytest.raises(
        RunError, match="lerobot: .*owner/squares.* download .*or pass a local dataset folder"
    ):
        build("owner/squares", episodes=[0])  # its rows are in a file never downloaded
    assert len(fake_hub.requests) == requests


def test_a_repo_id_offline_fails_in_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    result = CliRunner().invoke(app, ["data", "lerobot", "owner/name", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.startswith("error: lerobot: cannot download the dataset owner/name (HF_HUB_OFFLINE")
    assert result.output.count("\n") == 1 and not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_laq_debug_and_ft_debug_train_on_a_converted_dataset(v3, tmp_path, monkeypatch):
    """`data lerobot`, then the specs' laq_debug and ft_debug models for a couple of steps on its shards: the
    LAQ's probe regresses the converted actions, the policy's tokenizer comes from the task texts."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["data", "lerobot", str(v3), "data/shards/squares", "--size", "64"])
    assert result.exit_code == 0, result.output
    sets = {
        "data.source": None,
        "data.shards": "data/shards/squares",
        "data.val_split": 0,  # 3 episodes: evaluate on training pairs
        "data.batch_size": 8,
        "data.val_pairs": 32,
        "train.max_step": 2,
        "train.eval_frequency": 2,
        "meta.max_session": 1,
    }
    laq = run_lab(ROOT / "specs/laq.json", "laq_debug", Mode("train"), sets)
    finetune = run_lab(
        ROOT / "specs/finetune.json", "ft_debug", Mode("train"), {**sets, "train.init_from": None}
    )
    laq_metrics = trial_metrics(laq, "laq_debug")
    assert laq_metrics["step"] == 2 and np.isfinite(laq_metrics["probe_r2"]) and laq_metrics["val_psnr"] > 10
    ft_metrics = trial_metrics(finetune, "ft_debug")
    assert ft_metrics["step"] == 2 and np.isfinite(ft_metrics["val_action_mse"])
    tokenizer = json.loads((finetune / "model/ft_debug_t0_tokenizer/tokenizer.json").read_text())
    assert {"push", "square", "down"} <= set(tokenizer["model"]["vocab"])


def trial_metrics(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / "info" / f"{name}_t0_trial_metrics.json").read_text())["mean"]
