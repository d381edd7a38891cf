"""Meta-World rendering: frames/s of expert rollouts (step + render), the source's fast path vs the naive one.

Naive: Meta-World's documented path, ``gym.make("Meta-World/MT1", render_mode="rgb_array", camera_name=...)``
and ``env.render()`` with gymnasium's defaults (a 640x480 4x-multisampled framebuffer, shadows, reflections,
depth read back). Fast: the source's ``TaskSimulator`` (one ``mujoco.Renderer`` per task drawing ``--size``
frames into a framebuffer of that size, no multisampling, shadows or reflections). Both roll out the same
experts for the same fixed number of steps, in this process (1 worker) or a spawned pool (2 workers with one
llvmpipe thread each, as in the source), one task per job. Prints frames/s by wall clock (process start and
env construction included) and once started (rollout loops only, over the busiest process), their ratios,
and the time of one render alone (same scene, no stepping).

    uv run python benchmarks/metaworld_render.py [--tasks reach-v3,push-v3,...] [--episodes 2] [--steps 60]

``--smoke`` runs it at tiny sizes in seconds (the test suite's check that it still runs; figures meaningless).
"""

import argparse
import multiprocessing
import os
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from hlrp_lab.env.metaworld_sim import TaskSimulator, episode_seed, import_mujoco, share_cores

if TYPE_CHECKING:
    import gymnasium as gym

Job = tuple[str, int, int, int, str]  # task, episodes, steps, size, camera
SMOKE = {"tasks": "reach-v3", "episodes": 1, "steps": 3, "size": 32, "repeats": 1, "render_frames": 2}


def gym_env(task: str, size: int, camera: str) -> "gym.Env":
    """A Meta-World env made the documented way, rendering ``size`` frames with gymnasium's defaults."""
    warnings.simplefilter("ignore")  # gymnasium's env checker and the experts' gain warnings
    import_mujoco()
    import gymnasium as gym
    import metaworld  # noqa: F401  (registers Meta-World/MT1)

    return gym.make(
        "Meta-World/MT1", env_name=task, render_mode="rgb_array", camera_name=camera, width=size, height=size
    )


def naive_rollouts(job: Job) -> tuple[int, float, int]:
    """Frames, rollout seconds and process id, through ``gym.make`` and ``env.render()`` with their defaults."""
    task, episodes, steps, size, camera = job
    from metaworld.policies import ENV_POLICY_MAP

    env = gym_env(task, size, camera)
    policy = ENV_POLICY_MAP[task]()
    frames, start = 0, time.perf_counter()
    for index in range(episodes):
        obs, _ = env.reset(seed=episode_seed(0, task, index))
        env.render()
        for _ in range(steps):
            obs, *_ = env.step(np.clip(policy.get_action(obs), -1.0, 1.0).astype(np.float32))
            env.render()
        frames += steps + 1
    seconds = time.perf_counter() - start
    env.close()
    return frames, seconds, os.getpid()


def fast_rollouts(job: Job) -> tuple[int, float, int]:
    """Frames, rollout seconds and process id, through the source's ``TaskSimulator``."""
    task, episodes, steps, size, camera = job
    simulator = TaskSimulator(task, size, camera)
    frames, start = 0, time.perf_counter()
    for index in range(episodes):
        frames += len(simulator.episode(episode_seed(0, task, index), steps, None).frames)
    seconds = time.perf_counter() - start
    simulator.close()
    return frames, seconds, os.getpid()


def render_only(size: int, camera: str, frames: int) -> tuple[float, float]:
    """Milliseconds per frame of ``env.render()`` and of the fast renderer, on one reach-v3 scene."""
    naive = gym_env("reach-v3", size, camera)
    naive.reset(seed=0)
    fast = TaskSimulator("reach-v3", size, camera)
    fast.reset(0)
    times = []
    for render in (naive.render, fast.render):
        render()  # the first frame creates the GL context
        start = time.perf_counter()
        for _ in range(frames):
            render()
        times.append((time.perf_counter() - start) / frames * 1000)
    naive.close()
    fast.close()
    return times[0], times[1]


def measure(rollouts: Callable[[Job], tuple[int, float, int]], jobs: list[Job], workers: int) -> dict:
    """Frames, wall seconds, frames/s by wall clock and once started (over the busiest process's loops)."""
    start = time.perf_counter()
    if workers == 1:
        results = [rollouts(job) for job in jobs]
    else:
        with multiprocessing.get_context("spawn").Pool(workers, initializer=share_cores) as pool:
            results = pool.map(rollouts, jobs, chunksize=1)
    wall = time.perf_counter() - start
    frames = sum(f for f, _, _ in results)
    busy: dict[int, float] = {}
    for _, seconds, pid in results:
        busy[pid] = busy.get(pid, 0.0) + seconds
    return {"frames": frames, "wall": wall, "fps": frames / wall, "loop_fps": frames / max(busy.values())}


def best(
    rollouts: Callable[[Job], tuple[int, float, int]], jobs: list[Job], workers: int, repeats: int
) -> dict:
    """The fastest of ``repeats`` measurements (the machine may be busy with other work)."""
    return max((measure(rollouts, jobs, workers) for _ in range(repeats)), key=lambda r: r["fps"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", default="reach-v3,push-v3,drawer-open-v3,button-press-v3")
    parser.add_argument("--episodes", type=int, default=2, help="Episodes per task.")
    parser.add_argument("--steps", type=int, default=60, help="Steps per episode (frames: one more).")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--camera", default="corner2")
    parser.add_argument("--repeats", type=int, default=1, help="Keep the fastest of this many runs.")
    parser.add_argument("--render-frames", type=int, default=50, help="Frames timed for render only.")
    parser.add_argument("--smoke", action="store_true", help=f"Tiny sizes, to check that it runs: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)
    import_mujoco()  # sets MUJOCO_GL=egl when unset, for this process and the spawned ones
    jobs = [(task, args.episodes, args.steps, args.size, args.camera) for task in args.tasks.split(",")]
    print(
        f"{len(jobs)} tasks x {args.episodes} episodes x {args.steps + 1} frames of {args.size}px, "
        f"camera {args.camera}, MUJOCO_GL={os.environ['MUJOCO_GL']}, "
        f"LP_NUM_THREADS={os.environ.get('LP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs"
    )
    print(f"{'path':<6} {'workers':>7} {'frames':>7} {'wall s':>7} {'frames/s':>9} {'once started':>13}")
    results = {}
    for name, rollouts in (("naive", naive_rollouts), ("fast", fast_rollouts)):
        for workers in (1, 2):
            r = results[name, workers] = best(rollouts, jobs, workers, args.repeats)
            line = f"{name:<6} {workers:>7} {r['frames']:>7} {r['wall']:>7.1f} {r['fps']:>9.1f}"
            print(f"{line} {r['loop_fps']:>13.1f}", flush=True)
    naive_ms, fast_ms = render_only(args.size, args.camera, args.render_frames)
    print(f"render only, ms/frame: naive {naive_ms:.1f}, fast {fast_ms:.1f} ({naive_ms / fast_ms:.1f}x)")
    for key, column in (("fps", "wall clock"), ("loop_fps", "once started")):
        fast_naive = [results["fast", w][key] / results["naive", w][key] for w in (1, 2)]
        two_one = [results[name, 2][key] / results[name, 1][key] for name in ("naive", "fast")]
        print(
            f"{column}: fast / naive {fast_naive[0]:.1f}x (1 worker), {fast_naive[1]:.1f}x (2 workers); "
            f"2 workers / 1: naive {two_one[0]:.2f}x, fast {two_one[1]:.2f}x"
        )


if __name__ == "__main__":
    main()
