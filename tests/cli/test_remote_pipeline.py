"""`hlrp-lab run-remote --pipeline`: the pipeline is checked here, then a copy of the train config that runs
`hlrp-lab pipeline` with data/ on a dstack volume is applied through a recording `dstack` stub (the dstack
server is the only thing faked); the copy validates with dstack's own models and its commands run the pipeline
with the -s values intact."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dstack._internal.core.models.configurations import TaskConfiguration, parse_apply_configuration
from typer.testing import CliRunner

from hlrp_lab.cli.main import app
from hlrp_lab.cli.remote import check_pipeline_locally
from hlrp_lab.lib.errors import SpecError
from tests.cli.test_remote import PASSED_ENV, ROOT, TOKEN, load, stub

SHARDS = "shards=/workflow/data/shards/mw"
runner = CliRunner()


@pytest.fixture
def dstack_stub(tmp_path, monkeypatch) -> Path:
    """A `dstack` on PATH that records its arguments, the variables it got and the config it applied (as
    tests/cli/test_remote.py's); the record's path. Runs from the checkout, with the Hub settings set."""
    record, bin_dir = tmp_path / "dstack_call.json", tmp_path / "bin"
    bin_dir.mkdir()
    stub(
        bin_dir / "dstack",
        "import json, os, sys\n"
        f"env = {{k: os.environ.get(k) for k in {PASSED_ENV!r}}}\n"
        "config = open(sys.argv[sys.argv.index('-f') + 1]).read()\n"
        f"json.dump({{'argv': sys.argv[1:], 'env': env, 'config': config}}, open({str(record)!r}, 'w'))",
    )
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_REPO", "lab/results")
    monkeypatch.chdir(ROOT)
    return record


def launched(record: Path) -> tuple[list[str], dict, TaskConfiguration, dict]:
    """What the stub was given: its arguments, environment, the config it applied (parsed by dstack) and the
    config as YAML."""
    call = json.loads(record.read_text())
    raw = yaml.safe_load(call["config"])
    return call["argv"], call["env"], parse_apply_configuration(raw), raw


@pytest.mark.parametrize(
    ("gpu", "volume", "config"),
    [(False, None, "run-cpu-train.yml"), (True, "lab-runs", "run-gpu-train.yml")],
)
def test_a_pipeline_is_launched_with_its_runs_on_a_volume(dstack_stub, gpu, volume, config):
    args = [
        "run-remote",
        "--pipeline",
        *(["--gpu"] if gpu else []),
        *(["--volume", volume] if volume else []),
    ]
    result = runner.invoke(app, [*args, "specs/pipeline.json", "study_mw", "-n", "study-1", "-s", SHARDS])
    assert result.exit_code == 0, result.output
    argv, env, applied, raw = launched(dstack_stub)
    written = Path(argv[2])
    assert argv == ["apply", "-f", str(written), "-y", "--detach", "--name", "study-1"]
    assert written.name == config and not written.exists()  # a temporary copy
    assert env == {
        "SPEC_FILE": "specs/pipeline.json",
        "SPEC_NAME": "study_mw",
        "LAB_MODE": "train",
        "SPEC_VARS": f"-s {SHARDS}",
        "HF_TOKEN": TOKEN,
        "HF_REPO": "lab/results",
    }
    original = load(config)
    assert [(v.name, v.path) for v in applied.volumes] == [(volume or "hlrp-data", "/workflow/data")]
    assert applied.files[0].local_path == str(ROOT) and applied.files[0].path == "/workflow"
    assert applied.commands[:-1] == original.commands[:-1]
    assert applied.commands[-1] == original.commands[-1].replace("hlrp-lab run ", "hlrp-lab pipeline ")
    assert applied.resources == original.resources and raw["max_price"] == original.max_price
    assert "results go to lab/results" in result.output


def test_the_remote_commands_run_the_pipeline_with_the_set_values_intact(dstack_stub, tmp_path):
    """The copy's commands, run by bash as dstack runs them, with `uv` and `apt-get` stubbed."""
    values = [SHARDS, "finetune_k5.train.max_step=50", "note=two words"]
    sets = [arg for value in values[:2] for arg in ("-s", value)]
    result = runner.invoke(app, ["run-remote", "--pipeline", "specs/pipeline.json", "study_mw", "dev", *sets])
    assert result.exit_code == 0, result.output
    bin_dir = tmp_path / "tools"  # bin/ holds the dstack stub
    bin_dir.mkdir()
    for tool in ("apt-get", "uv"):
        stub(bin_dir / tool, "import json, sys; print(json.dumps(sys.argv[1:]))" if tool == "uv" else "")
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        **{k: v for k, v in json.loads(dstack_stub.read_text())["env"].items() if k.isupper()},
        "SPEC_VARS": shlex.join(arg for value in values for arg in ("-s", value)),
    }
    script = " && ".join(launched(dstack_stub)[2].commands)
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True)
    uv_runs = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("[")]
    assert uv_runs[1] == [
        *["run", "--frozen", "--no-dev", "hlrp-lab", "pipeline", "specs/pipeline.json", "study_mw", "dev"],
        *["-s", values[0], "-s", values[1], "-s", values[2], "--upload-hf"],
    ]


def test_dry_run_names_the_changes_and_launches_nothing(dstack_stub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    result = runner.invoke(
        app, ["run-remote", "--pipeline", "specs/pipeline.json", "chain_debug", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "dstack apply -f .dstack/run-cpu-train.yml -y --detach --name chain-debug-" in lines[0]
    assert "SPEC_NAME=chain_debug" in lines and "HF_TOKEN=(not set)" in lines
    assert (
        "config: a copy of .dstack/run-cpu-train.yml with volumes: hlrp-data:/workflow/data, "
        in result.output
    )
    assert "hlrp-lab pipeline instead of run" in result.output
    assert not dstack_stub.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["specs/pipeline.json", "chain_debug", "search"], "mode 'search': a pipeline runs in train"),
        (["specs/pipeline.json", "study_mw"], "variable ${shards} is not set; pass -s shards=VALUE"),
        (["specs/pipeline.json", "chain_nope"], "no pipeline named 'chain_nope'; pipelines in this file:"),
        (
            ["specs/pipeline.json", "chain_debug", "-s", "finetune.train.max_stepp=1"],
            "steps.finetune (ft_debug): train.max_stepp: unknown key",
        ),
        (["specs/pipeline.json", "chain_debug", "--slurm"], "--pipeline: launched through dstack"),
        (
            ["--gpu", "specs/pipeline.json", "chain_debug", "--nodes", "2"],
            "--pipeline: its steps run one after another on one machine",
        ),
        (["specs/pipeline.json", "chain_debug", "-n", "Bad_Name"], "-n 'Bad_Name': dstack run names are"),
    ],
)
def test_a_bad_pipeline_fails_before_launch(dstack_stub, args, message):
    result = runner.invoke(app, ["run-remote", "--pipeline", *args])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not dstack_stub.exists()


def test_volume_needs_pipeline_and_steps_need_spec_files_in_the_checkout(dstack_stub, tmp_path):
    result = runner.invoke(app, ["run-remote", "specs/laq.json", "laq_debug", "--volume", "runs"])
    assert (
        result.exit_code == 2
        and "--volume runs: the volume of a pipeline's runs; add --pipeline" in result.output
    )
    outside = tmp_path / "pipelines.json"
    step = {"spec_file": str(tmp_path / "specs.json"), "spec_name": "x"}
    outside.write_text(json.dumps({"p": {"steps": {"a": step}}}))
    with pytest.raises(SpecError, match="steps.a.spec_file: spec file not found: "):
        check_pipeline_locally(outside, "p", [])
    (tmp_path / "specs.json").write_text((ROOT / "specs" / "laq.json").read_text())
    with pytest.raises(SpecError, match=r"steps.a.spec_file: .*: outside this checkout; dstack uploads only"):
        check_pipeline_locally(outside, "p", [])


def test_a_pipeline_launch_imports_neither_torch_nor_ray():
    args = ["run-remote", "--pipeline", "specs/pipeline.json", "study_mw", "-s", SHARDS, "--dry-run"]
    code = (
        "import sys; from typer.testing import CliRunner; from hlrp_lab.cli.main import app; "
        f"result = CliRunner().invoke(app, {args!r}); assert result.exit_code == 0, result.output; "
        "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-1] == "[]"
