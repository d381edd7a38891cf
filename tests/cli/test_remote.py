"""`hlrp-lab run-remote` and the .dstack configurations: every config validates with dstack's own models,
the command and environment handed to a recording `dstack` stub, the remote command line, the multi-node
config run-remote writes for --nodes/--gpus-per-node, and the errors raised before anything is launched.
(`--slurm`: tests/slurm/.)"""

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dstack._internal.core.errors import ConfigurationError
from dstack._internal.core.models.configurations import TaskConfiguration, parse_apply_configuration
from dstack._internal.core.models.fleets import FleetConfiguration
from typer.testing import CliRunner

from hlrp_lab.cli.main import app
from hlrp_lab.cli.remote import check_run_references, masked_sets
from hlrp_lab.lib.errors import SpecError

ROOT = Path(__file__).parents[2]
DSTACK_DIR = ROOT / ".dstack"
TASKS = ["run-cpu-train.yml", "run-cpu-search.yml", "run-gpu-train.yml", "run-gpu-search.yml"]
MULTINODE = "run-gpu-multinode.yml"
PASSED_ENV = ["SPEC_FILE", "SPEC_NAME", "LAB_MODE", "SPEC_VARS", "HF_TOKEN", "HF_REPO"]
TOKEN = "hf_RemoteTestToken987654321"
runner = CliRunner()


def load(name: str):
    return parse_apply_configuration(yaml.safe_load((DSTACK_DIR / name).read_text()))


@pytest.mark.parametrize("name", TASKS)
def test_task_configs_validate_with_dstack(name):
    config = load(name)
    assert isinstance(config, TaskConfiguration)
    assert set(PASSED_ENV) <= set(config.env)
    assert config.files[0].local_path == ".." and config.files[0].path == config.working_dir == "/workflow"
    assert (config.resources.gpu.count.min > 0) == ("gpu" in name)
    assert config.retry.on_events and config.max_duration and config.spot_policy
    assert config.commands[-1].endswith('hlrp-lab run "$SPEC_FILE" "$SPEC_NAME" "$LAB_MODE" "$@" --upload-hf')


@pytest.mark.parametrize("name", ["fleet-gpu.yml", "fleet-cpu.yml", "fleet-gpu-cluster.yml"])
def test_fleet_configs_validate_with_dstack(name):
    assert isinstance(load(name), FleetConfiguration)


def test_dstack_rejects_a_bad_config():
    with pytest.raises(ConfigurationError):
        parse_apply_configuration({"type": "task", "commands": ["echo"], "resources": {"memory": "lots"}})


def test_dstackignore_keeps_data_and_secrets_out():
    ignored = (ROOT / ".dstackignore").read_text().split()
    assert {"data/", ".env", ".venv/"} <= set(ignored)


def test_remote_command_line_passes_the_set_values_intact(tmp_path):
    """The task's commands, run by bash as dstack runs them (joined with &&), with `uv` and `apt-get` stubbed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("apt-get", "uv"):
        stub(bin_dir / tool, "import json, sys; print(json.dumps(sys.argv[1:]))" if tool == "uv" else "")
    values = ["lr=3e-4", "note=two words", "shards=data/mw-{000000..000003}.tar", "q='x'"]
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "SPEC_FILE": "specs/laq.json",
        "SPEC_NAME": "laq_debug",
        "LAB_MODE": "train",
        "SPEC_VARS": shlex.join(arg for value in values for arg in ("-s", value)),
    }
    script = " && ".join(load("run-gpu-train.yml").commands)
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True)
    runs = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("[")]
    assert runs[0] == ["sync", "--frozen", "--no-dev"]
    args = ["run", "--frozen", "--no-dev", "hlrp-lab", "run", "specs/laq.json", "laq_debug", "train"]
    assert runs[1] == [
        *args,
        "-s",
        values[0],
        "-s",
        values[1],
        "-s",
        values[2],
        "-s",
        values[3],
        "--upload-hf",
    ]


# --- run-remote ---------------------------------------------------------------------------------------------


def stub(path: Path, code: str) -> None:
    path.write_text(f"#!{sys.executable}\n{code}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def dstack_stub(tmp_path, monkeypatch) -> Path:
    """A `dstack` on PATH that records its arguments and the variables it was given; the record's path."""
    record = tmp_path / "dstack_call.json"
    bin_dir = tmp_path / "bin"
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


@pytest.mark.parametrize(
    ("gpu", "mode", "spec", "config"),
    [
        (False, "train", "laq_debug", "run-cpu-train.yml"),
        (False, "search", "laq_search", "run-cpu-search.yml"),
        (True, "train", "laq_debug", "run-gpu-train.yml"),
        (True, "search", "laq_search", "run-gpu-search.yml"),
    ],
)
def test_run_remote_launches_dstack_with_the_right_config_and_env(dstack_stub, gpu, mode, spec, config):
    args = ["run-remote", *(["--gpu"] if gpu else []), "specs/laq.json", spec, mode, "-n", "my-run-1"]
    result = runner.invoke(app, [*args, "-s", "train.max_step=50"])
    assert result.exit_code == 0, result.output
    call = json.loads(dstack_stub.read_text())
    assert call["argv"] == ["apply", "-f", f".dstack/{config}", "-y", "--detach", "--name", "my-run-1"]
    assert call["config"] == (DSTACK_DIR / config).read_text()
    assert call["env"] == {
        "SPEC_FILE": "specs/laq.json",
        "SPEC_NAME": spec,
        "LAB_MODE": mode,
        "SPEC_VARS": "-s train.max_step=50",
        "HF_TOKEN": TOKEN,
        "HF_REPO": "lab/results",
    }


def test_dry_run_prints_command_and_masked_env_without_launching(dstack_stub):
    result = runner.invoke(app, ["run-remote", "--gpu", "specs/laq.json", "laq_debug", "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].endswith(
        "dstack apply -f .dstack/run-gpu-train.yml -y --detach --name " + lines[0].split()[-1]
    )
    assert lines[0].split()[-1].startswith("laq-debug-")
    assert "HF_TOKEN=***" in lines and "SPEC_FILE=specs/laq.json" in lines and "LAB_MODE=train" in lines
    assert TOKEN not in result.output
    assert not dstack_stub.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["specs/laq.json", "laq_nope"], "no spec named 'laq_nope'; specs in this file: laq_debug"),
        (["specs/laq.json", "laq_full"], r"variable ${data_dir} is not set; pass -s data_dir=VALUE"),
        (["specs/laq.json", "laq_debug", "search"], "search: spec 'laq_debug' has no search block"),
        (["specs/laq.json", "laq_debug", "eval"], "run-remote takes one of dev, train, search"),
        (["specs/laq.json", "laq_debug", "-n", "Bad_Name"], "-n 'Bad_Name': dstack run names are"),
        (["specs/nope.json", "laq_debug"], "spec file not found: specs/nope.json"),
        (["/etc/hostname", "x"], "outside this checkout; dstack uploads only the directory it runs from"),
        (
            ["specs/laq.json", "laq_debug", "-s", "model.encoder.name=ViT"],
            "model.encoder.name: unknown encoder 'ViT'; registered: CNNEncoder, ViTEncoder",
        ),
    ],
)
def test_bad_specs_fail_before_launch(dstack_stub, args, message):
    result = runner.invoke(app, ["run-remote", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not dstack_stub.exists()


def test_missing_dstack_or_token_fails_before_launch(dstack_stub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    result = runner.invoke(app, ["run-remote", "specs/laq.json", "laq_debug"])
    assert result.exit_code == 2 and "HF_TOKEN is not set" in result.output
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    result = runner.invoke(app, ["run-remote", "specs/laq.json", "laq_debug"])
    assert result.exit_code == 2
    assert "dstack is not installed; install it with `uv tool install dstack`" in result.output
    assert not dstack_stub.exists()


def test_dry_run_masks_secret_set_values_and_refuses_local_run_references(dstack_stub):
    assert masked_sets(["meta.hf_token=hf_abcdefgh123", "lr=3"]) == ["-s", "meta.hf_token=***", "-s", "lr=3"]
    result = runner.invoke(app, ["run-remote", "specs/finetune.json", "ft_debug", "--dry-run"])
    assert result.exit_code == 2
    assert "train.init_from: latest:vla_debug names a run under data/, which run-remote does not upload" in (
        result.output
    )


def test_run_references_in_a_search_block_are_refused_too():
    search = {"train.init_from__choice": ["/mnt/runs/vla_2026_11_23_101010", "data/vla_2026_11_23_101010"]}
    with pytest.raises(
        SpecError, match=r"search.train.init_from__choice\[1\]: data/vla_2026_11_23_101010 names"
    ):
        check_run_references({"train": {"init_from": None}, "data": {"source": None}, "search": search})
    check_run_references(
        {"train": {"init_from": "/mnt/runs/vla_2026_11_23_101010"}, "data": {"shards": "data/mw"}}
    )


# --- several GPUs and nodes ----------------------------------------------------------------------------------

DSTACK_VARS = {
    "DSTACK_MASTER_NODE_IP": "10.0.0.1",
    "DSTACK_NODE_RANK": "1",
    "DSTACK_NODES_NUM": "3",
    "DSTACK_GPUS_PER_NODE": "4",
}


def test_multinode_config_validates_with_dstack():
    config = load(MULTINODE)
    assert isinstance(config, TaskConfiguration)
    assert config.nodes == 2 and config.resources.gpu.count.min == config.resources.gpu.count.max > 0
    assert set(PASSED_ENV) <= set(config.env)
    assert config.files[0].local_path == ".." and config.files[0].path == config.working_dir == "/workflow"
    assert config.retry.on_events and config.max_duration and config.spot_policy
    for variable in DSTACK_VARS:
        assert f'"${variable}"' in config.commands[-1]
    assert config.commands[-1].endswith("--upload-hf")


def test_multinode_command_line_runs_the_lab_launcher_with_dstack_variables(tmp_path):
    """The multi-node task's commands, run by bash as on node 1 of 3 (dstack's variables set)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("apt-get", "uv"):
        stub(bin_dir / tool, "import json, sys; print(json.dumps(sys.argv[1:]))" if tool == "uv" else "")
    values = ["train.max_step=50", "note=two words", "q='x'"]
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "SPEC_FILE": "specs/foundation.json",
        "SPEC_NAME": "vla_smolvlm",
        "LAB_MODE": "train",
        "SPEC_VARS": shlex.join(arg for value in values for arg in ("-s", value)),
        **DSTACK_VARS,
    }
    script = " && ".join(load(MULTINODE).commands)
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True)
    runs = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("[")]
    assert runs[1] == [
        *["run", "--frozen", "--no-dev", "hlrp-lab", "run", "specs/foundation.json", "vla_smolvlm", "train"],
        *["-s", values[0], "-s", values[1], "-s", values[2]],
        *["--nproc-per-node", "4", "--nnodes", "3", "--node-rank", "1"],
        *["--master-addr", "10.0.0.1", "--master-port", "29500", "--upload-hf"],
    ]


def test_run_remote_applies_a_copy_with_the_nodes_and_gpus(dstack_stub):
    before = sorted(DSTACK_DIR.iterdir())
    args = ["run-remote", "--gpu", "specs/laq.json", "laq_debug", "train", "-n", "multi-1"]
    result = runner.invoke(app, [*args, "--nodes", "3", "--gpus-per-node", "4", "-s", "data.batch_size=48"])
    assert result.exit_code == 0, result.output
    call = json.loads(dstack_stub.read_text())
    written = Path(call["argv"][2])
    assert call["argv"] == ["apply", "-f", str(written), "-y", "--detach", "--name", "multi-1"]
    assert written.name == MULTINODE and not written.exists()  # a temporary copy, removed after the launch
    assert sorted(DSTACK_DIR.iterdir()) == before  # the checkout stays clean
    config = parse_apply_configuration(yaml.safe_load(call["config"]))
    assert config.nodes == 3 and config.resources.gpu.count.min == config.resources.gpu.count.max == 4
    assert config.files[0].local_path == str(ROOT) and config.files[0].path == "/workflow"
    assert config.commands == load(MULTINODE).commands
    assert call["env"]["SPEC_VARS"] == "-s data.batch_size=48" and call["env"]["LAB_MODE"] == "train"


def test_gpus_per_node_alone_is_one_node_of_the_multinode_config(dstack_stub):
    result = runner.invoke(
        app, ["run-remote", "--gpu", "specs/laq.json", "laq_debug", "--gpus-per-node", "2"]
    )
    assert result.exit_code == 0, result.output
    config = parse_apply_configuration(yaml.safe_load(json.loads(dstack_stub.read_text())["config"]))
    assert config.nodes == 1 and config.resources.gpu.count.min == 2


def test_multinode_dry_run_names_the_changes(dstack_stub):
    args = ["run-remote", "--gpu", "specs/laq.json", "laq_debug", "--nodes", "2", "--gpus-per-node", "4"]
    result = runner.invoke(app, [*args, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert (
        f"dstack apply -f .dstack/{MULTINODE} -y --detach --name laq-debug-" in result.output.splitlines()[0]
    )
    assert f"config: a copy of .dstack/{MULTINODE} with nodes: 2, resources.gpu.count: 4" in result.output
    assert not dstack_stub.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["specs/laq.json", "laq_debug", "--nodes", "2"],
            "--nodes 2: several nodes or GPUs run on GPU machines; add --gpu",
        ),
        (
            ["--gpu", "specs/laq.json", "laq_search", "search", "--nodes", "2"],
            "--nodes 2: a search runs in one process (Ray Tune spreads its trials), not on 16 ranks",
        ),
        (
            ["--gpu", "specs/laq.json", "laq_debug", "--nodes", "3", "--gpus-per-node", "4"],
            "data.batch_size: 32 does not split over 12 rank(s) x train.grad_accum 1; use a multiple of 12",
        ),
        (
            ["--gpu", "specs/laq.json", "laq_debug", "--gpus-per-node", "0"],
            "--gpus-per-node 0: a dstack multi-node",
        ),
        (["specs/laq.json", "laq_debug", "--partition", "gpu"], "--partition: a Slurm option; add --slurm"),
        (["specs/laq.json", "laq_debug", "--requeue"], "--requeue: a Slurm option; add --slurm"),
    ],
)
def test_multinode_errors_are_one_line_before_launch(dstack_stub, args, message):
    result = runner.invoke(app, ["run-remote", *args, "--dry-run"])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not dstack_stub.exists()


def test_multinode_launch_imports_neither_torch_nor_ray():
    args = [
        "run-remote",
        "--gpu",
        "specs/laq.json",
        "laq_debug",
        "--nodes",
        "2",
        "--gpus-per-node",
        "4",
        "--dry-run",
    ]
    code = (
        "import sys; from typer.testing import CliRunner; from hlrp_lab.cli.main import app; "
        f"result = CliRunner().invoke(app, {args!r}); assert result.exit_code == 0, result.output; "
        "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-1] == "[]"
