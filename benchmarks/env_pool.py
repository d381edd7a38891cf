"""Closed-loop evaluation: steps/s of gymnasium's ``AsyncVectorEnv`` (the evaluator) against the hand-rolled pool
of worker processes it replaced (kept here only, to compare).

Both run the same evaluation: the scripted expert (batched in this process, once per step) on the same seeded
episodes of a few tasks, in ``--workers`` spawned processes that step and render (one llvmpipe thread each).
The runs alternate (old, new, new, old, ...) so that machine noise hits both alike; the best of each is
compared. Prints environment steps/s by wall clock (process start and simulator construction included) and
once started (from the first policy call), CPU time per step (this process and the workers, start-up
included: on a busy machine the steadiest figure), their ratios, and whether both gave the same metrics.

    uv run python benchmarks/env_pool.py [--tasks reach-v3,drawer-open-v3] [--episodes 4] [--size 64]

``--smoke`` runs it at tiny sizes in seconds (the test suite's check that it still runs; figures meaningless).
"""

import argparse
import multiprocessing
import os
import resource
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from hlrp_lab.env.metaworld_eval import (
    Job,
    Observation,
    Policy,
    Result,
    episode_jobs,
    evaluate_policy,
    expert_policy,
    metrics,
)
from hlrp_lab.env.metaworld_sim import ACTION_SIZE, SimulatorSlot, import_mujoco, share_cores
from hlrp_lab.env.metaworld_tasks import TASK_DESCRIPTIONS
from hlrp_lab.env.policy_output import checked_actions
from hlrp_lab.lib.errors import RunError

SMOKE = {"tasks": "reach-v3", "episodes": 1, "max_steps": 3, "size": 32, "repeats": 1}


# The hand-rolled pool the evaluator used before AsyncVectorEnv (its videos left out).
def worker_loop(conn: Connection, image_size: int, camera: str) -> None:
    """A worker process: answers ("reset", task, seed) and ("step", action) with (frame, state, success)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    share_cores()
    slot = SimulatorSlot(image_size, camera)
    try:
        while (message := conn.recv())[0] != "close":
            if message[0] == "reset":
                _, task, seed = message
                simulator = slot.simulator_for(task)
                obs, success = simulator.reset(seed), False
            else:
                assert slot.simulator is not None
                simulator = slot.simulator
                obs, success = simulator.step(message[1])
            conn.send(("ok", simulator.render(), obs.astype(np.float32), success))
    except (EOFError, BrokenPipeError):
        pass
    except Exception:  # noqa: BLE001 - whatever failed goes back to the main process
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass
    finally:
        slot.close()
        conn.close()


class Worker:
    """The main process's handle on one worker process and the episode it runs."""

    def __init__(self, context: Any, image_size: int, camera: str):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=worker_loop, args=(child, image_size, camera), daemon=True)
        self.process.start()
        child.close()
        self.job: Job | None = None
        self.steps, self.success = 0, False
        self.frame, self.state = np.zeros(0, np.uint8), np.zeros(0, np.float32)

    def start(self, job: Job) -> None:
        self.job, self.steps, self.success = job, 0, False
        self.conn.send(("reset", job.task, job.seed))

    def step(self, action: np.ndarray) -> None:
        self.steps += 1
        self.conn.send(("step", action))

    def receive(self) -> None:
        try:
            reply = self.conn.recv()
        except EOFError as err:
            raise RunError(f"old pool: the worker died (exit code {self.process.exitcode})") from err
        if reply[0] == "error":
            raise RunError(f"old pool: the worker failed:\n{reply[1]}")
        _, self.frame, self.state, self.success = reply

    def stop(self) -> None:
        try:
            self.conn.send(("close",))
        except OSError:
            pass
        self.conn.close()
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()


def old_batch(workers: list[Worker]) -> Observation:
    tasks = [worker.job.task for worker in workers if worker.job is not None]
    return Observation(
        frames=np.stack([worker.frame for worker in workers]),
        states=np.stack([worker.state for worker in workers]),
        tasks=tasks,
        instructions=[TASK_DESCRIPTIONS[task] for task in tasks],
    )


def start_next(workers: list[Worker], pending: deque[Job]) -> list[Worker]:
    started = []
    for worker in workers:
        worker.job = None
        if pending:
            worker.start(pending.popleft())
            started.append(worker)
    for worker in started:
        worker.receive()
    return started


def old_evaluate(
    policy: Policy,
    tasks: list[str],
    episodes: int,
    *,
    image_size: int,
    camera: str,
    max_steps: int,
    seed: int,
    workers: int,
) -> dict[str, float]:
    """The evaluator as it was: its own spawned worker processes, one pipe each."""
    pending = deque(episode_jobs(tasks, episodes, seed, 0))
    results: list[Result] = []
    context = multiprocessing.get_context("spawn")
    pool = [Worker(context, image_size, camera) for _ in range(min(workers, len(pending)))]
    try:
        active = start_next(pool, pending)
        while active:
            # one action per step
            actions = checked_actions(policy(old_batch(active)), len(active), 1, ACTION_SIZE)[:, 0]
            for worker, action in zip(active, actions, strict=True):
                worker.step(action)
            for worker in active:
                worker.receive()
            done = [worker for worker in active if worker.success or worker.steps >= max_steps]
            for worker in done:
                assert worker.job is not None
                results.append(Result(worker.job, worker.steps, worker.success))
            start_next(done, pending)
            active = [worker for worker in pool if worker.job is not None]
    finally:
        for worker in pool:
            worker.stop()
    return metrics(results, tasks)


class Timed:
    """The expert, noting when it is first called (the pool has started: processes, simulators, resets)."""

    def __init__(self, policy: Policy):
        self.policy, self.first = policy, 0.0

    def __call__(self, obs: Observation) -> np.ndarray:
        self.first = self.first or time.perf_counter()
        return self.policy(obs)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished (joined) children: both pools join their workers."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(evaluate: Callable[..., dict[str, float]], args: argparse.Namespace) -> dict:
    """Steps, steps/s by wall clock and once started, CPU time per step (this process and the workers) and
    the metrics of one evaluation."""
    policy = Timed(expert_policy())
    start, cpu = time.perf_counter(), cpu_seconds()
    result = evaluate(
        policy,
        args.tasks.split(","),
        args.episodes,
        image_size=args.size,
        camera=args.camera,
        max_steps=args.max_steps,
        seed=args.seed,
        workers=args.workers,
    )
    end, cpu = time.perf_counter(), cpu_seconds() - cpu
    steps = round(result["episode_length"] * result["episodes"])
    return {
        "steps": steps,
        "fps": steps / (end - start),
        "loop_fps": steps / (end - policy.first),
        "cpu_ms": cpu / steps * 1000,
        "metrics": result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", default="reach-v3,drawer-open-v3")
    parser.add_argument("--episodes", type=int, default=4, help="Episodes per task.")
    parser.add_argument("--max-steps", type=int, default=150)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--camera", default="corner2")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="Keep the fastest of this many runs of each.")
    parser.add_argument("--smoke", action="store_true", help=f"Tiny sizes, to check that it runs: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)
    import_mujoco()  # sets MUJOCO_GL=egl when unset, for this process and the spawned ones
    print(
        f"expert on {args.tasks} x {args.episodes} episodes (<= {args.max_steps} steps), {args.size}px, "
        f"camera {args.camera}, {args.workers} workers, MUJOCO_GL={os.environ['MUJOCO_GL']}, "
        f"{os.cpu_count()} CPUs, best of {args.repeats}"
    )
    pools = {"old pool": old_evaluate, "AsyncVectorEnv": evaluate_policy}
    runs: dict[str, list[dict]] = {name: [] for name in pools}
    for repeat in range(args.repeats):
        order = list(pools.items())
        for name, evaluate in order[:: 1 if repeat % 2 == 0 else -1]:  # ABBA: neither always goes first
            runs[name].append(measure(evaluate, args))
    best = {  # each figure's best run
        name: {
            "fps": max(r["fps"] for r in results),
            "loop_fps": max(r["loop_fps"] for r in results),
            "cpu_ms": min(r["cpu_ms"] for r in results),
        }
        for name, results in runs.items()
    }
    first = runs["old pool"][0]
    for name, r in best.items():
        print(
            f"{name + ':':<16} {r['fps']:7.1f} steps/s, {r['loop_fps']:7.1f} once started, "
            f"{r['cpu_ms']:5.1f} CPU ms/step ({first['steps']} steps, success {first['metrics']['success_rate']:.2f})"
        )
    old, new = best["old pool"], best["AsyncVectorEnv"]
    print(
        f"ratio AsyncVectorEnv/old: {new['fps'] / old['fps']:.2f} (wall clock), "
        f"{new['loop_fps'] / old['loop_fps']:.2f} (once started), {new['cpu_ms'] / old['cpu_ms']:.2f} (CPU per step)"
    )
    same = all(r["metrics"] == first["metrics"] for results in runs.values() for r in results)
    print(f"same metrics: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
