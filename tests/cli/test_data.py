"""`hlrp-lab data ...`: shards and manifest written to disk, `data info` verifying them, no silent overwrite."""

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from hlrp_lab.cli.main import app
from hlrp_lab.data.shards import read_episodes, read_manifest, shard_urls
from hlrp_lab.data.sources.config import LeRobotConfig, MetaWorldConfig, ProceduralConfig, VideosConfig
from hlrp_lab.stages.config import LabelConfig

runner = CliRunner()


def write_procedural(out: Path, *extra: str):
    args = ["data", "procedural", str(out), "--episodes", "6", "--episode-length", "5", "--size", "16"]
    return runner.invoke(app, [*args, "--shard-size", "0.01", *extra])


def test_procedural_shards_with_a_manifest_and_info(tmp_path):
    out = tmp_path / "proc"
    result = write_procedural(out)
    assert result.exit_code == 0, result.output
    assert "wrote 6 episodes, 30 frames in" in result.output
    manifest = read_manifest(out)
    assert manifest["source"] == "procedural" and manifest["source_args"]["episode_length"] == 5
    assert manifest["num_samples"] == 6 and len(manifest["shards"]) > 1
    assert (out / "manifest.json").is_file()
    assert all(p.name.startswith("procedural-") for p in out.glob("*.tar"))
    assert [len(e.frames) for e in read_episodes(shard_urls(out))] == [5] * 6
    assert not list(tmp_path.glob(".*tmp"))  # built beside OUT_DIR, then renamed into place

    info = runner.invoke(app, ["data", "info", str(out)])
    assert info.exit_code == 0, info.output
    assert "samples:  6 (one per episode), 30 frames of 16x16" in info.output
    assert f"checksums: all {len(manifest['shards'])} shards verified" in info.output


def test_regenerating_gives_byte_identical_shards(tmp_path):
    write_procedural(tmp_path / "a", "--name", "p")
    write_procedural(tmp_path / "b", "--name", "p")
    a, b = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b")
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]


def test_info_names_a_damaged_shard_and_exits_1(tmp_path):
    out = tmp_path / "proc"
    write_procedural(out)
    victim = sorted(out.glob("*.tar"))[1]
    victim.write_bytes(victim.read_bytes()[:700])
    result = runner.invoke(app, ["data", "info", str(out)])
    assert result.exit_code == 1
    assert f"1 shards do not match the manifest: {victim.name}" in result.output


def test_an_existing_dataset_is_not_overwritten_silently(tmp_path):
    out = tmp_path / "proc"
    write_procedural(out)
    before = json.loads((out / "manifest.json").read_text())
    refused = runner.invoke(app, ["data", "procedural", str(out), "--episodes", "2"])
    assert refused.exit_code == 2 and "exists and is not empty; pass --overwrite" in refused.output
    assert json.loads((out / "manifest.json").read_text()) == before
    replaced = write_procedural(out, "--overwrite", "--seed", "4")
    assert replaced.exit_code == 0 and read_manifest(out)["source_args"]["seed"] == 4


def test_info_on_a_directory_without_manifest(tmp_path):
    result = runner.invoke(app, ["data", "info", str(tmp_path)])
    assert result.exit_code == 2 and "no manifest.json" in result.output


def test_a_spec_trains_on_shards_named_by_a_brace_pattern(tmp_path, shard_cache, monkeypatch):
    """The shards `data procedural` wrote, named in data.shards, feed a real run end to end."""
    from hlrp_lab.experiment.lab import run_lab
    from hlrp_lab.spec.spec_util import parse_mode
    from tests.conftest import tiny_spec_dict

    out = tmp_path / "shards"
    runner.invoke(
        app, ["data", "procedural", str(out), "--episodes", "12", "--episode-length", "8", "--size", "32"]
    )
    spec = tiny_spec_dict(shard_cache)
    del spec["data"]["source"]
    spec["data"]["shards"] = "${shards}"
    spec_file = tmp_path / "s.json"
    spec_file.write_text(json.dumps({"from_shards": spec}))
    pattern = str(out / "procedural-{000000..000000}.tar")
    monkeypatch.chdir(tmp_path)
    run_dir = run_lab(spec_file, "from_shards", parse_mode("train"), {"shards": pattern})
    metrics = json.loads((run_dir / "info" / "from_shards_t0_trial_metrics.json").read_text())["mean"]
    assert metrics["step"] == 12 and metrics["data/skipped_shards"] == 0


def data_command(name: str):
    return typer.main.get_command(app).commands["data"].commands[name]


@pytest.mark.parametrize(
    ("command", "config", "filled_by_command"),
    [
        ("procedural", ProceduralConfig, ()),
        ("videos", VideosConfig, ("root",)),
        ("metaworld", MetaWorldConfig, ()),
        ("label", LabelConfig, ("laq", "shards")),
        ("lerobot", LeRobotConfig, ("path",)),
    ],
)
def test_source_options_are_the_config_fields(command, config, filled_by_command):
    """One definition: each key of the source's config is an option with the config's default and help."""
    params = {
        param.name: param for param in data_command(command).params if param.param_type_name == "option"
    }
    for name, field in config.model_fields.items():
        if name in filled_by_command:
            assert name not in params
            continue
        assert params[name].default == field.default, name
        assert params[name].help.startswith(field.description), name


def test_a_command_passes_the_config_defaults_and_minus_one_as_null(tmp_path, monkeypatch):
    blocks = []
    monkeypatch.setattr("hlrp_lab.cli.data.write", lambda block, *args: blocks.append(block))
    for args in ([], ["--after-success", "-1", "--workers", "3"], ["--after-success", "0"]):
        result = runner.invoke(app, ["data", "metaworld", str(tmp_path), *args])
        assert result.exit_code == 0, result.output
    assert blocks[0] == {"name": "metaworld", **MetaWorldConfig().model_dump()}
    assert blocks[1]["after_success"] is None and blocks[1]["workers"] == 3
    assert blocks[2]["after_success"] == 0
    refused = runner.invoke(app, ["data", "metaworld", str(tmp_path), "--after-success", "-2"])
    assert refused.exit_code == 2 and blocks[3:] == []

    result = runner.invoke(app, ["data", "procedural", str(tmp_path), "--objects", "2"])
    assert result.exit_code == 0, result.output
    assert blocks[3] == {"name": "procedural", **ProceduralConfig(num_objects=2).model_dump()}
