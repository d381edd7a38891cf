"""The launcher's checks, all before any rank starts: where the ranks run, and whether the spec (a new run's, or
the saved spec of a resumed run) splits over them."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hlrp_lab.experiment.launch import Launch
from hlrp_lab.lib.batch import fitting_ranks
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.layout import RunLayout
from hlrp_lab.lib.runs import write_spec
from hlrp_lab.spec.check import check_spec
from hlrp_lab.spec.spec_util import resolve_spec

ROOT = Path(__file__).parents[2]
LAQ = ROOT / "specs" / "laq.json"


def test_one_node_uses_a_standalone_rendezvous_and_several_name_node_0():
    assert Launch(2).torchrun_args()[-1] == "--standalone"
    args = Launch(8, nnodes=2, node_rank=1, master_addr="10.0.0.1").torchrun_args()
    assert args[args.index("--node-rank") + 1] == "1" and args[args.index("--master-addr") + 1] == "10.0.0.1"
    assert args[args.index("--master-port") + 1] == "29500" and args[args.index("--max-restarts") + 1] == "0"
    assert Launch(8, nnodes=2, master_addr="a").ranks == 16


def test_several_nodes_need_the_address_of_node_0_and_a_node_rank_below_their_number(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SpecError, match=r"^--nnodes 2 needs --master-addr"):
        Launch(8, nnodes=2, node_rank=1)
    with pytest.raises(SpecError, match=r"^--node-rank 2: the nodes are numbered 0 to 1$"):
        Launch(8, nnodes=2, node_rank=2, master_addr="10.0.0.1")


def test_a_rank_of_a_torchrun_job_refuses_to_launch_more(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SpecError, match="already a rank of a torchrun job"):
        Launch(2)


@pytest.mark.parametrize(("batch", "accum", "ranks", "fit"), [(32, 1, 3, 2), (32, 2, 8, 8), (30, 1, 4, 3)])
def test_fitting_ranks_is_the_most_that_split_the_batch(batch, accum, ranks, fit):
    assert fitting_ranks(batch, accum, ranks) == fit
    assert batch % (accum * fit) == 0


def lab(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "hlrp_lab", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    return out, time.monotonic() - started


def test_a_batch_that_does_not_split_fails_once_before_any_rank_starts(tmp_path):
    out, _ = lab("run", str(LAQ), "laq_debug", "train", "--nproc-per-node", "3", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        (
            "error: data.batch_size: 32 does not split over 3 rank(s) x train.grad_accum 1; use a multiple of 3, "
            "e.g. -s data.batch_size=30"
        )
    ]
    assert not (tmp_path / "data").exists()  # nothing generated, no rank started


def test_a_resumed_run_keeps_its_batch_so_the_advice_is_a_number_of_ranks(tmp_path):
    spec = check_spec(resolve_spec(LAQ, "laq_debug", {}), ranks=1)
    run_dir = tmp_path / "data" / "laq_debug_2026_11_30_120000"
    spec["meta"]["run_dir"] = str(run_dir)
    (run_dir / "info").mkdir(parents=True)
    write_spec(RunLayout(run_dir, "laq_debug").spec_file, "laq_debug", spec)
    out, _ = lab("run", str(LAQ), "laq_debug", f"train@{run_dir}", "--nproc-per-node", "3", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        (
            "error: data.batch_size: the run's global batch 32 does not split over 3 ranks x train.grad_accum 1, "
            "and a resumed run keeps it; launch --nproc-per-node 2 (or another divisor of 32)"
        )
    ]
    assert json.loads(RunLayout(run_dir, "laq_debug").spec_file.read_text())["laq_debug"] == spec  # untouched


@pytest.mark.parametrize("mode", ["eval", "search"])
def test_one_process_modes_refuse_the_launch_options(tmp_path, mode):
    out, _ = lab("run", str(LAQ), "laq_search", mode, "--nproc-per-node", "2", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith(f"error: {mode} runs in one process")
