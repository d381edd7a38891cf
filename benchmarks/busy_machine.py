"""CPU time of a LAQ training step on a busy machine: OpenMP's default (threads spin long while they wait) vs
the lab's setting (``GOMP_SPINCOUNT=10000``, set by the CLI before torch loads), side by side in one run.

Busy-loop processes occupy every CPU this process has; each variant trains ``laq_debug``'s model for
``--steps`` steps in a fresh subprocess (so the setting takes effect before torch loads), alternating the
variants ``--repeats`` times. Prints CPU seconds per step (user + system) and steps/s of both, busy and idle,
and the ratio default / lab.

    uv run python benchmarks/busy_machine.py [--steps 60] [--repeats 2]

``--smoke`` runs it at tiny sizes without busy loops, in seconds (the test suite's check that it still runs;
figures meaningless).
"""

import argparse
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

SPEC_FILE = Path(__file__).parents[1] / "specs" / "laq.json"
SMOKE = {"steps": 1, "repeats": 1}


def worker(steps: int) -> None:
    """Train ``steps`` steps of laq_debug's model on random frames; print CPU seconds per step and steps/s."""
    if os.environ.get("BENCH_LAB_SETTING") == "1":
        from hlrp_lab.lib.cpus import short_openmp_spin

        short_openmp_spin()
    import torch
    import torch.nn.functional as F

    from hlrp_lab.spec.check import check_spec
    from hlrp_lab.stages.laq import LAQStage

    spec = check_spec(json.loads(SPEC_FILE.read_text())["laq_debug"])
    size, batch = spec["data"]["image_size"], spec["data"]["batch_size"]
    torch.manual_seed(0)
    model = LAQStage.build_model(spec)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    frames = torch.rand(2, batch, 3, size, size)
    used = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for _ in range(steps):
        out = model(frames[0], frames[1])
        loss = F.mse_loss(out.reconstruction, frames[1]) + out.quantizer_loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    wall = time.perf_counter() - started
    now = resource.getrusage(resource.RUSAGE_SELF)
    cpu = now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime
    print(json.dumps({"cpu_per_step": cpu / steps, "steps_per_s": steps / wall}))


def run_variant(lab_setting: bool, steps: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["BENCH_LAB_SETTING"] = "1" if lab_setting else "0"
    out = subprocess.run(
        [sys.executable, __file__, "--worker", "--steps", str(steps)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def spin() -> None:
    while True:
        pass


def measure(steps: int, repeats: int, hogs: int) -> dict[str, list[dict[str, float]]]:
    """Alternate the two variants while ``hogs`` busy-loop processes run."""
    processes = [multiprocessing.Process(target=spin, daemon=True) for _ in range(hogs)]
    for process in processes:
        process.start()
    try:
        results: dict[str, list[dict[str, float]]] = {"default": [], "lab": []}
        for _ in range(repeats):
            results["default"].append(run_variant(False, steps))
            results["lab"].append(run_variant(True, steps))
        return results
    finally:
        for process in processes:
            process.terminate()
            process.join()


def report(label: str, results: dict[str, list[dict[str, float]]]) -> None:
    best = {name: min(runs, key=lambda r: r["cpu_per_step"]) for name, runs in results.items()}
    for name, row in best.items():
        print(f"{label} {name:7s}: {row['cpu_per_step']:.3f} CPU-s/step, {row['steps_per_s']:.2f} steps/s")
    ratio = best["default"]["cpu_per_step"] / best["lab"]["cpu_per_step"]
    speed = best["lab"]["steps_per_s"] / best["default"]["steps_per_s"]
    print(
        f"{label} ratio: default uses {ratio:.2f}x the CPU time of the lab's setting; lab speed {speed:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help=f"Tiny sizes, to check that it runs: {SMOKE}")
    args = parser.parse_args()
    if args.worker:
        worker(args.steps)
        return
    if args.smoke:
        vars(args).update(SMOKE)
    from hlrp_lab.lib.cpus import available_cpus

    cpus = available_cpus()
    print(f"cpus: {cpus}, steps per run: {args.steps}, repeats: {args.repeats}")
    report("busy", measure(args.steps, args.repeats, hogs=0 if args.smoke else cpus))
    if not args.smoke:
        report("idle", measure(args.steps, args.repeats, hogs=0))


if __name__ == "__main__":
    main()
