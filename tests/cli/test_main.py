"""The command line as a user runs it: exit codes, one-line errors, nothing written for a bad spec."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hlrp_lab.cli.main import app

ROOT = Path(__file__).parents[2]
LAQ_SPECS = ROOT / "specs" / "laq.json"


def cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m hlrp_lab ARGS`` in a fresh process."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "hlrp_lab", *args],
        cwd=cwd,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def write_spec(tmp_path: Path, change: dict) -> Path:
    spec = json.loads(LAQ_SPECS.read_text())["laq_debug"]
    for dotted, value in change.items():
        *parents, last = dotted.split(".")
        node = spec
        for key in parents:
            node = node[key]
        node[last] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"laq_debug": spec}))
    return path


@pytest.mark.parametrize("command", [["--help"], ["run", "--help"], ["spec", "--help"]])
def test_help_imports_neither_torch_nor_ray(command):
    code = (
        "import sys; from typer.testing import CliRunner; from hlrp_lab.cli.main import app; "
        f"result = CliRunner().invoke(app, {command!r}); assert result.exit_code == 0, result.output; "
        "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_console_scripts_are_installed():
    bin_dir = Path(sys.executable).parent
    for script in ("hlrp-lab", "slm-style"):
        out = subprocess.run([bin_dir / script, "--help"], capture_output=True, text=True, check=True)
        assert "run" in out.stdout and "spec" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "specs/nope.json", "laq_debug"], "error: spec file not found: specs/nope.json"),
        (
            ["run", str(LAQ_SPECS), "laq_nope"],
            "error: .*no spec named 'laq_nope'; specs in this file: laq_debug, laq_full",
        ),
        (
            ["run", str(LAQ_SPECS), "laq_full", "train"],
            r"error: data\.cache_dir: variable \$\{data_dir\} is not set; pass -s data_dir=VALUE",
        ),
        (["run", str(LAQ_SPECS), "laq_debug", "trian"], "error: mode 'trian': expected one of"),
        (
            ["run", str(LAQ_SPECS), "laq_debug", "-s", "lr=1"],
            r"error: -s lr: spec 'laq_debug' has no \$\{lr\}",
        ),
        (
            ["run", str(LAQ_SPECS), "laq_debug", "-s", "train.max_step=-1"],
            r"error: train\.max_step: Input should be greater than 0",
        ),
        (
            ["run", str(LAQ_SPECS), "laq_debug", "-s", "model.encoder.name=ViT"],
            r"error: model\.encoder\.name: unknown encoder 'ViT'; registered: CNNEncoder, ViTEncoder",
        ),
    ],
)
def test_bad_specs_fail_with_one_line_exit_2_and_write_nothing(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and re.match(message, lines[0]), result.output
    assert not (tmp_path / "data").exists()


def test_bad_spec_exit_code_in_a_real_process(tmp_path):
    bad = write_spec(tmp_path, {"model.quantizer.codebook_size": "eight"})
    result = cli("run", str(bad), "laq_debug", "dev", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: model.quantizer.codebook_size: Input should be a valid integer, unable to parse string as an "
        "integer (got 'eight')"
    )
    assert not (tmp_path / "data").exists()


def test_spec_check_passes_every_shipped_spec():
    out = cli("spec", "check", cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    specs = [
        (file, name)
        for file in sorted((ROOT / "specs").glob("*.json"))
        for name in json.loads(file.read_text())
    ]
    assert len(lines) == len(specs) and all(line.startswith("ok ") for line in lines)
    assert "laq_full  (needs -s data_dir=...)" in out.stdout


def test_spec_check_reports_each_bad_spec(tmp_path):
    bad = write_spec(tmp_path, {"train.grad_clip": "big"})
    result = CliRunner().invoke(app, ["spec", "check", str(bad), str(LAQ_SPECS)])
    assert result.exit_code == 2
    assert f"FAIL {bad} laq_debug: train.grad_clip: Input should be a valid number" in result.output
    assert f"ok   {LAQ_SPECS} laq_debug" in result.output


def test_spec_show_resolves_variables_and_defaults():
    result = CliRunner().invoke(
        app, ["spec", "show", str(LAQ_SPECS), "laq_full", "-s", "data_dir=/scratch/laq"]
    )
    assert result.exit_code == 0, result.output
    spec = json.loads(result.output)
    assert spec["data"]["cache_dir"] == "/scratch/laq"
    assert spec["train"]["grad_accum"] == 1


def test_specs_doc_is_in_sync_with_the_code():
    from hlrp_lab.spec.docs import END, START, spec_keys_markdown

    doc = (ROOT / "docs" / "SPECS.md").read_text()
    generated = doc.split(START)[1].split(END)[0]
    assert generated.strip() == spec_keys_markdown().strip(), "run: hlrp-lab spec keys --update docs/SPECS.md"


def test_training_without_ml_install_names_the_fix(tmp_path):
    """In the orchestration-only install (no torch), `run` says which install is missing, exit 2."""
    code = (
        "import sys; sys.modules['torch'] = None; from hlrp_lab.cli.main import app; "
        f"app(['run', {str(LAQ_SPECS)!r}, 'laq_debug', 'dev'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, check=False, capture_output=True, text=True
    )
    assert out.returncode == 2, out.stderr
    assert "needs 'torch'" in out.stderr and "uv sync" in out.stderr
    assert not (tmp_path / "data").exists()
