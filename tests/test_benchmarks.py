"""Every script under benchmarks/ runs: each in its ``--smoke`` mode (tiny sizes), in a fresh process, printing
its figures. The numbers mean nothing at these sizes; the point is that no benchmark rots unnoticed."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
FIGURES = {  # script -> lines its output must hold
    "asha_vs_full.py": [r"ASHA / full: steps \d+\.\d% \(target <= 40%\), best val_psnr \d+\.\d%"],
    "busy_machine.py": [r"ratio: default uses \d+\.\d\dx the CPU time of the lab's setting"],
    "ddp_scaling.py": [
        r"1 rank: +\d+ samples/s",
        r"2 ranks: +\d+ samples/s",
        r"scaling efficiency thr\(2\)/\(2 x thr\(1\)\): \d+\.\d\d \(target >= 0\.8\)",
    ],
    "env_pool.py": [
        r"old pool: +[\d.]+ steps/s",
        r"AsyncVectorEnv: +[\d.]+ steps/s",
        r"ratio AsyncVectorEnv/old: \d+\.\d\d",
        r"same metrics: yes",
    ],
    "gpu_throughput.py": [
        r"eager: +\d+\.\d\d steps/s, MFU n/a",
        r"compiled: +\d+\.\d\d steps/s, MFU n/a",
        r"compile speed-up: \d+\.\d\dx",
        r"lab loop, 1 rank: +\d+\.\d\d steps/s",
        r"lab loop, 2 ranks \(ddp\): +\d+\.\d\d steps/s",
    ],
    "loader_throughput.py": [
        r"shards \(WebDataset\): +\d+ pairs/s",
        r"PNG files \(map-style\): +\d+ pairs/s",
        r"ratio shards/PNG: +\d+\.\d\d",
        r"ratio shards/training: +\d+\.\d\d",
    ],
    "loop_overhead.py": [r"ratio session/bare: \d+\.\d{3}"],
    "metaworld_render.py": [
        r"fast +2 +\d+ +[\d.]+ +[\d.]+ +[\d.]+",
        r"render only, ms/frame: naive [\d.]+, fast [\d.]+",
        r"wall clock: fast / naive [\d.]+x \(1 worker\)",
    ],
    "spec_check.py": [
        r"bad spec, one-line error: +\d+\.\d\d s \(target < 2 s\)",
        r"ratio build / torch-free: \d+\.\dx",
    ],
}


def test_every_benchmark_has_a_smoke_check():
    assert sorted(p.name for p in BENCHMARKS.glob("*.py")) == sorted(FIGURES)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a Ray search on a busy 2-core machine takes minutes to start its trials
@pytest.mark.parametrize("script", sorted(FIGURES))
def test_benchmark_runs_and_prints_its_figures(script, tmp_path):
    """Run in an empty folder: whatever a benchmark writes (run directories, data caches) lands there."""
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--smoke"],
        cwd=tmp_path,
        env={**os.environ, "TQDM_DISABLE": "1"},
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for figure in FIGURES[script]:
        assert re.search(figure, result.stdout), f"{figure!r} not in:\n{result.stdout}"
