"""The architecture holds: the import-linter contracts of pyproject.toml (layers, no cycles), and the spec layer
checks specs without torch (docs/ARCHITECTURE.md)."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
HEAVY = re.compile(r"\|\s+(torch|transformers|ray|vector_quantize_pytorch)(\.\S+)?$", re.MULTILINE)


def imported_heavy(args: list[str], cwd: Path = ROOT) -> tuple[int, str, set[str]]:
    """Exit code, output and the heavy packages (torch, transformers, ray, ...) that ``hlrp-lab args``
    imported, read from ``python -X importtime``."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "hlrp_lab", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    heavy = {match[1] for match in HEAVY.finditer(result.stderr)}
    output = result.stdout + "\n".join(
        line for line in result.stderr.splitlines() if "import time:" not in line
    )
    return result.returncode, output, heavy


def test_import_contracts_hold():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint is not None, "import-linter is in the dev group: uv sync"
    result = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["spec", "check"],  # every shipped spec
        ["spec", "show", "specs/finetune.json", "ft_debug"],
        ["spec", "show", "specs/foundation.json", "vla_debug", "-s", "model.latent_head.num_tokens=2"],
    ],
)
def test_spec_commands_import_no_torch(args):
    code, output, heavy = imported_heavy(args)
    assert code == 0, output
    assert heavy == set(), f"`hlrp-lab {' '.join(args)}` imported {sorted(heavy)}"


def test_a_bad_spec_is_one_line_without_torch(tmp_path):
    spec = json.loads((ROOT / "specs" / "finetune.json").read_text())["ft_debug"]
    spec["model"]["action_head"]["hiden"] = 64  # misspelt key of a component
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"bad": spec}))
    code, output, heavy = imported_heavy(["spec", "check", str(path)])
    assert code == 2
    assert f"FAIL {path} bad: model.action_head.hiden: unknown key" in output
    assert heavy == set()


def test_stage_keys_belong_to_their_stage(tmp_path):
    """A key a stage declares (finetune's train.init_from) is unknown to another stage."""
    laq = json.loads((ROOT / "specs" / "laq.json").read_text())["laq_debug"]
    laq["train"]["init_from"] = "latest:vla_debug"
    path = tmp_path / "laq.json"
    path.write_text(json.dumps({"laq": laq}))
    code, output, heavy = imported_heavy(["spec", "check", str(path)])
    assert code == 2 and "train.init_from: unknown key" in output
    assert heavy == set()
