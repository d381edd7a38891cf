"""The orchestration commands (run-remote, push, list, pull, plot) work without importing torch or ray: each
runs for real in one fresh process, and torch and ray must not be in its sys.modules afterwards."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from hlrp_lab.experiment.lab import run_lab
from hlrp_lab.spec.spec_util import Mode
from tests.cli.test_remote import stub
from tests.conftest import tiny_spec_dict

ROOT = Path(__file__).parents[2]

SCRIPT = """
import json, os, sys
from tests.fake_hub import FakeHub
from typer.testing import CliRunner
from hlrp_lab.cli.main import app

hub = FakeHub().__enter__()
os.environ.update(HF_ENDPOINT=hub.url, HF_TOKEN="hf_OrchestrationToken123", HF_REPO="lab/results")
work, run, root, out = sys.argv[1:5]
codes = {}
def invoke(cwd, *args):
    os.chdir(cwd)
    result = CliRunner().invoke(app, list(args))
    codes[args[0]] = result.exit_code, result.output[-500:]
invoke(root, "run-remote", "--gpu", "specs/laq.json", "laq_debug", "-n", "no-torch-1")
invoke(work, "push", f"data/{run}")
invoke(work, "list")
invoke(out, "pull", run)
invoke(out, "plot", "-f", run, "-o", out)
print(json.dumps({"codes": codes, "loaded": sorted(m for m in ("torch", "ray") if m in sys.modules)}))
"""


def test_orchestration_commands_import_neither_torch_nor_ray(tmp_path, shard_cache):
    work, out, bin_dir = tmp_path / "work", tmp_path / "out", tmp_path / "bin"
    for folder in (work, out, bin_dir):
        folder.mkdir()
    spec_file = work / "specs.json"
    spec_file.write_text(json.dumps({"tiny": tiny_spec_dict(shard_cache)}))
    cwd = Path.cwd()
    os.chdir(work)
    try:
        run = run_lab(spec_file, "tiny", Mode("train"), {}).name
    finally:
        os.chdir(cwd)
    stub(bin_dir / "dstack", "")  # launches nothing, succeeds
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-c", SCRIPT, str(work), run, str(ROOT), str(out)]
    completed = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert {command: code for command, (code, _) in report["codes"].items()} == dict.fromkeys(
        ("run-remote", "push", "list", "pull", "plot"), 0
    ), report["codes"]
    assert report["loaded"] == []
    assert (out / "data" / run / "info" / "tiny_t0_s0_session_metrics.csv").is_file()
    assert (out / "val_psnr_tiny.png").is_file()
    shutil.rmtree(out / "data")
