"""The Meta-World source, rendered for real (32x32, headless MuJoCo): layout, content, determinism, errors."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from hlrp_lab.cli.main import app
from hlrp_lab.data.episode import Episode
from hlrp_lab.data.shards import read_episodes, read_manifest, shard_urls, verify_shards
from hlrp_lab.data.sources import DATA_SOURCES
from hlrp_lab.data.sources.config import MetaWorldConfig
from hlrp_lab.data.sources.metaworld import MetaWorldSource
from hlrp_lab.env.metaworld_tasks import TASK_DESCRIPTIONS, TASK_SETS
from hlrp_lab.experiment.lab import run_lab
from hlrp_lab.lib.errors import RunError, SpecError
from hlrp_lab.spec.spec_util import parse_mode
from tests.conftest import tiny_spec_dict

SIZE = 32
SMALL = {"tasks": "reach-v3,drawer-open-v3", "episodes": 2, "max_steps": 10, "seed": 3}


def render(image_size: int = SIZE, **config) -> list[Episode]:
    return list(MetaWorldSource(MetaWorldConfig(**config), image_size=image_size).episodes())


@pytest.fixture(scope="module")
def episodes() -> list[Episode]:
    return render(**SMALL)


def assert_same(first: list[Episode], second: list[Episode]) -> None:
    assert [e.seed for e in first] == [e.seed for e in second]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.states, b.states)


def test_layout(episodes):
    assert len(MetaWorldSource(MetaWorldConfig(**SMALL), image_size=SIZE)) == len(episodes) == 4
    assert [e.task for e in episodes] == ["reach-v3", "reach-v3", "drawer-open-v3", "drawer-open-v3"]
    assert len({e.seed for e in episodes}) == 4
    for e in episodes:
        assert e.frames.shape == (11, SIZE, SIZE, 3) and e.frames.dtype == np.uint8
        assert e.actions.shape == (10, 4) and e.actions.dtype == np.float32
        assert np.abs(e.actions).max() <= 1.0
        assert e.states.shape == (11, 4) and e.states.dtype == np.float32
        assert e.success.shape == (11,) and e.success.dtype == bool and not e.success[0]
        assert e.instruction == TASK_DESCRIPTIONS[e.task] and e.instruction


def test_frames_show_the_scene_right_side_up(episodes):
    for e in episodes:
        frames = e.frames.astype(np.float32)
        assert frames.std(axis=(1, 2, 3)).min() > 20  # not blank
        assert frames[:, :3].std() < 5 < frames[:, -3:].std()  # plain backdrop above, floor and table below
        assert not np.array_equal(e.frames[0], e.frames[-1])  # the arm moves


def test_tasks_look_different(episodes):
    reach, drawer = episodes[0].frames[0].astype(int), episodes[2].frames[0].astype(int)
    assert (np.abs(reach - drawer).max(axis=-1) > 40).sum() >= 5


def test_same_config_same_episodes_whatever_the_workers(episodes):
    assert_same(episodes, render(**SMALL))
    assert_same(episodes, render(**SMALL, workers=2))


def test_episode_seeds_do_not_depend_on_the_other_tasks():
    alone = MetaWorldSource(MetaWorldConfig(tasks="drawer-open-v3", episodes=2), image_size=SIZE)
    mixed = MetaWorldSource(MetaWorldConfig(tasks="reach-v3,drawer-open-v3", episodes=2), image_size=SIZE)
    assert alone.jobs() == mixed.jobs()[2:]


def test_expert_solves_reach_then_stops():
    (episode,) = render(tasks="reach-v3", episodes=1, max_steps=150, after_success=5)
    first = int(np.argmax(episode.success))
    assert episode.success.any() and episode.success[first:].all()
    assert len(episode.actions) == first + 5 < 150


def test_task_sets():
    difficulties = [TASK_SETS[name] for name in ("easy", "medium", "hard", "very_hard")]
    assert [len(tasks) for tasks in difficulties] == [28, 11, 6, 5]
    assert (
        sorted(task for tasks in difficulties for task in tasks)
        == TASK_SETS["mt50"]
        == sorted(TASK_DESCRIPTIONS)
    )
    assert set(TASK_SETS["mt10"]) < set(TASK_DESCRIPTIONS)
    source = DATA_SOURCES.build({"name": "metaworld", "tasks": "easy"}, "data.source", image_size=SIZE)
    assert len(source) == 28 * 10


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"tasks": "reach-v2"}, "unknown Meta-World tasks"),
        ({"tasks": " , "}, "unknown Meta-World tasks"),
        ({"camera": "front"}, "camera"),
        ({"max_steps": 501}, "max_steps"),
        ({"workers": 0}, "workers"),
    ],
)
def test_bad_config(block, message):
    with pytest.raises(SpecError, match=message):
        DATA_SOURCES.config({"name": "metaworld", **block}, "data.source")


def test_render_failure_names_the_backend_and_packages(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "bogus")  # read by the spawned process's first import of mujoco
    with pytest.raises(RunError, match="MUJOCO_GL=bogus.*libegl-mesa0"):
        render(tasks="reach-v3", episodes=1, max_steps=2, workers=2)


def test_data_metaworld_writes_shards_a_spec_trains_on(tmp_path, shard_cache, monkeypatch):
    """`hlrp-lab data metaworld` (2 tasks x 2 episodes, 2 workers) -> shards -> a few LAQ training steps."""
    out = tmp_path / "mw"
    args = ["data", "metaworld", str(out), "--tasks", "reach-v3,drawer-open-v3", "--episodes", "2"]
    result = CliRunner().invoke(
        app,
        [
            *args,
            "--max-steps",
            "12",
            "--after-success",
            "-1",
            "--seed",
            "3",
            "--size",
            "32",
            "--workers",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "wrote 4 episodes, 52 frames in 1 shards" in result.output
    manifest = read_manifest(out)
    assert manifest["source_args"]["tasks"] == "reach-v3,drawer-open-v3" and manifest["image_size"] == 32
    assert manifest["source_args"]["after_success"] is None  # -1: every episode runs to --max-steps
    assert set(manifest["keys"]) >= {"actions.npy", "states.npy", "success.npy", "instruction.txt"}
    assert verify_shards(out) == []
    episodes = list(read_episodes(shard_urls(out)))
    assert [e.instruction for e in episodes] == ["Reach a goal position"] * 2 + ["Open a drawer"] * 2
    assert all(e.actions.shape == (12, 4) and e.states.shape == (13, 4) for e in episodes)
    assert_same(episodes, render(**{**SMALL, "max_steps": 12}))  # the seeds regenerate the dataset

    spec = tiny_spec_dict(shard_cache)
    del spec["data"]["source"]
    spec["data"].update(shards=str(out), offsets=[2], val_split=0.5, val_pairs=8)
    spec_file = tmp_path / "specs.json"
    spec_file.write_text(json.dumps({"mw": spec}))
    monkeypatch.chdir(tmp_path)
    run_dir = run_lab(spec_file, "mw", parse_mode("train"), {})
    metrics = json.loads((run_dir / "info" / "mw_t0_trial_metrics.json").read_text())["mean"]
    assert metrics["step"] == 12 and "probe_r2" in metrics and metrics["data/skipped_shards"] == 0
