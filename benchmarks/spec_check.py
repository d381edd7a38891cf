"""How fast a spec is checked: the torch-free check (``hlrp-lab spec check``) against the same check with the
meta-device dry build (``spec check --build``, which imports torch and transformers as every check did before
the spec layer was split from the models), side by side in one run, each a fresh CLI process.

Three timings, best of ``--repeats``: the one-line error of a bad spec (an unknown key), the torch-free check
of the shipped VLA spec, and that spec with ``--build``. Prints seconds and the ratio build / torch-free.

    uv run python benchmarks/spec_check.py [--repeats 3]

``--smoke`` runs each once (the test suite's check that it still runs; figures meaningless on a busy machine).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPECS = Path(__file__).parents[1] / "specs"
TARGET_S = 2.0  # a bad spec's error should come back within this


def cli_seconds(args: list[str], expect_rc: int) -> float:
    """Wall seconds of one ``hlrp-lab`` process with ``args``, which must exit with ``expect_rc``."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "hlrp_lab", *args], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    if result.returncode != expect_rc:
        raise SystemExit(
            f"hlrp-lab {' '.join(args)}: exit {result.returncode}\n{result.stdout}{result.stderr}"
        )
    return seconds


def best_of(repeats: int, args: list[str], expect_rc: int) -> float:
    return min(cli_seconds(args, expect_rc) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="each timing once")
    args = parser.parse_args()
    repeats = 1 if args.smoke else args.repeats
    with tempfile.TemporaryDirectory() as folder:
        good = Path(folder) / "vla.json"
        vla = json.loads((SPECS / "foundation.json").read_text())["vla_debug"]
        good.write_text(json.dumps({"vla_debug": vla}))
        bad = Path(folder) / "bad.json"
        bad.write_text(json.dumps({"bad": {**vla, "train": {**vla.get("train", {}), "max_stpe": 10}}}))
        bad_s = best_of(repeats, ["spec", "check", str(bad)], expect_rc=2)
        free_s = best_of(repeats, ["spec", "check", str(good)], expect_rc=0)
        build_s = best_of(repeats, ["spec", "check", "--build", str(good)], expect_rc=0)
    print(f"bad spec, one-line error:   {bad_s:.2f} s (target < {TARGET_S:.0f} s)")
    print(f"valid spec, torch-free:     {free_s:.2f} s")
    print(f"valid spec, --build:        {build_s:.2f} s")
    print(f"ratio build / torch-free: {build_s / free_s:.1f}x")


if __name__ == "__main__":
    main()
