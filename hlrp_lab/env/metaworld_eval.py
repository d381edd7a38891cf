"""Closed-loop evaluation of policies in Meta-World: success rate over seeded episodes, rendered headless.

Episode ``i`` of a task starts from ``episode_seed(seed, task, i)`` (the data source's seeds: evaluate with a
seed other than the training data's) and ends at its first success (Meta-World's convention) or after
``max_steps`` steps. Environments and rendering live in spawned worker processes, never in this one (Mesa's
llvmpipe and torch's triton crash a process that loads both: see ``metaworld.demonstrations``); this process
runs the policy once per step on the batch of every active environment, like a vectorized environment. A
worker that finishes an episode starts the next one waiting, task by task, until every episode is done.

Frames are rendered by the data source's ``TaskSimulator``, so a policy sees exactly what it was trained on
for the same ``image_size`` and ``camera``. Results are deterministic for a given policy, seed and number of
workers; a policy whose actions depend on the batch (one random generator shared by all environments) gets
other batches, and so other results, with another number of workers.
"""

import multiprocessing
import signal
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from hlrp_lab.data.sources.metaworld import (
    MAX_PATH_LENGTH,
    TASK_DESCRIPTIONS,
    SimulatorSlot,
    episode_seed,
    expert_action,
    import_mujoco,
    share_cores,
)
from hlrp_lab.lib.errors import RunError

VIDEO_FPS = 10
VIDEO_MIN_WIDTH = 128


@dataclass
class Observation:
    """A batch over the active environments."""

    frames: np.ndarray  # uint8 (N, H, W, 3), rendered exactly as the dataset renders them
    states: np.ndarray  # float32 (N, 39): the full goal-observable Meta-World observation
    tasks: list[str]
    instructions: list[str]  # TASK_DESCRIPTIONS[task]


Policy = Callable[[Observation], np.ndarray]  # -> (N, 4) actions; the evaluator clips them to [-1, 1]


@dataclass
class Job:
    """One episode to run: episode ``index`` of ``task``, started from ``seed``."""

    task: str
    index: int
    seed: int
    record: bool


@dataclass
class Result:
    """How an episode ended: after how many steps, solved or not."""

    job: Job
    steps: int
    success: bool


def worker_loop(conn: Connection, image_size: int, camera: str) -> None:
    """A worker process: answers ("reset", task, seed) and ("step", action) with (frame, state, success).

    Stops at ("close",) or when the main process is gone. Ctrl-C is left to the main process, which closes
    its workers; an error is sent back as ("error", traceback).
    """
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
        pass  # the main process closed its end: nothing to answer
    except Exception:  # noqa: BLE001 - whatever failed goes back to the main process, traceback and all
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
        child.close()  # the worker holds it now; a dead worker then reads as EOF here
        self.job: Job | None = None
        self.steps, self.success = 0, False
        self.frame, self.state = np.zeros(0, np.uint8), np.zeros(0, np.float32)
        self.recorded: list[np.ndarray] = []

    def start(self, job: Job) -> None:
        """Reset to ``job``'s episode (answered by ``receive``)."""
        self.job, self.steps, self.success, self.recorded = job, 0, False, []
        self.send(("reset", job.task, job.seed))

    def step(self, action: np.ndarray) -> None:
        self.steps += 1
        self.send(("step", action))

    def send(self, message: tuple) -> None:
        try:
            self.conn.send(message)
        except OSError as err:
            raise self.failure(f"the worker is gone ({err})") from err

    def receive(self) -> None:
        """The worker's answer to the last reset or step: frame, state, success."""
        try:
            reply = self.conn.recv()
        except EOFError as err:
            self.process.join(timeout=1)
            raise self.failure(f"the worker died (exit code {self.process.exitcode})") from err
        if reply[0] == "error":
            raise self.failure(f"the worker failed:\n{reply[1]}")
        _, self.frame, self.state, self.success = reply
        if self.job is not None and self.job.record:
            self.recorded.append(self.frame)

    def failure(self, what: str) -> RunError:
        job = self.job
        episode = f"{job.task} episode {job.index} (seed {job.seed})" if job else "no episode"
        return RunError(f"metaworld eval: {episode}: {what}")

    def stop(self) -> None:
        """Ask the process to stop; with the pipe closed it stops anyway once it has no more to do."""
        try:
            self.conn.send(("close",))
        except OSError:
            pass
        self.conn.close()

    def join(self) -> None:
        """Wait for the process to stop; terminated if it does not in time."""
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()


def episode_jobs(tasks: list[str], episodes: int, seed: int, videos: int) -> list[Job]:
    """Every episode, task by task (a worker mostly keeps its simulator); the first ``videos`` of the order
    episode 0 of each task, episode 1 of each task, ... are recorded."""
    recorded = [(task, i) for i in range(episodes) for task in tasks][:videos]
    jobs = [(task, i) for task in tasks for i in range(episodes)]
    return [Job(task, i, episode_seed(seed, task, i), (task, i) in recorded) for task, i in jobs]


def batch(workers: list[Worker]) -> Observation:
    tasks = [worker.job.task for worker in workers if worker.job is not None]
    return Observation(
        frames=np.stack([worker.frame for worker in workers]),
        states=np.stack([worker.state for worker in workers]),
        tasks=tasks,
        instructions=[TASK_DESCRIPTIONS[task] for task in tasks],
    )


def checked_actions(actions: np.ndarray, count: int) -> np.ndarray:
    """The policy's actions clipped to [-1, 1] as float32, as the dataset records the expert's."""
    actions = np.asarray(actions, dtype=np.float64)
    if actions.shape != (count, 4) or not np.isfinite(actions).all():
        raise ValueError(f"the policy must return finite ({count}, 4) actions, got shape {actions.shape}")
    return np.clip(actions, -1.0, 1.0).astype(np.float32)


def write_video(path: Path, frames: list[np.ndarray], fps: int = VIDEO_FPS) -> None:
    """An mp4 of ``frames``, upscaled (nearest neighbour) to at least VIDEO_MIN_WIDTH pixels, even sides."""
    import av  # here: only a run that writes videos needs PyAV

    height, width = frames[0].shape[:2]
    scale = max(1, -(-VIDEO_MIN_WIDTH // width))
    if height * scale % 2 or width * scale % 2:  # yuv420p wants even sides: an odd side, an odd scale
        scale += 1
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width * scale, height * scale, "yuv420p"
        for frame in frames:
            big = np.ascontiguousarray(frame.repeat(scale, axis=0).repeat(scale, axis=1))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(big, format="rgb24")))
        container.mux(stream.encode())


def metrics(results: list[Result], tasks: list[str]) -> dict[str, float]:
    success = {task: [r.success for r in results if r.job.task == task] for task in tasks}
    return {
        "success_rate": float(np.mean([r.success for r in results])),
        **{f"success/{task}": float(np.mean(values)) for task, values in success.items()},
        "episode_length": float(np.mean([r.steps for r in results])),
        "episodes": float(len(results)),
    }


def evaluate_policy(
    policy: Policy,
    tasks: list[str],
    episodes: int,
    *,
    image_size: int,
    camera: str,
    max_steps: int,
    seed: int,
    workers: int,
    video_dir: Path | None = None,
    videos: int = 0,
    video_prefix: str = "rollout",
) -> dict[str, float]:
    """Success rate (mean and per task) and mean episode length of ``policy`` over ``episodes`` seeded episodes
    per task, run in ``workers`` spawned processes; the first ``videos`` episodes (one per task first) are
    written as ``video_dir/{video_prefix}_{task}_{i}.mp4``."""
    unknown = [task for task in tasks if task not in TASK_DESCRIPTIONS]
    if unknown or not tasks or episodes < 1 or workers < 1 or not 1 <= max_steps <= MAX_PATH_LENGTH:
        raise ValueError(
            f"evaluate_policy: need known tasks (unknown: {unknown}), episodes >= 1, workers >= 1 and "
            f"1 <= max_steps <= {MAX_PATH_LENGTH}"
        )
    if videos and video_dir is None:
        raise ValueError("evaluate_policy: videos need a video_dir")
    pending = deque(episode_jobs(tasks, episodes, seed, videos))
    results: list[Result] = []
    context = multiprocessing.get_context("spawn")  # a fresh process: no GL, LLVM or thread state copied
    pool: list[Worker] = []
    progress = tqdm(total=len(pending), desc="evaluating", unit="episode")
    try:
        for _ in range(min(workers, len(pending))):
            pool.append(Worker(context, image_size, camera))
        active = start_next(pool, pending)
        while active:
            actions = checked_actions(policy(batch(active)), len(active))
            for worker, action in zip(active, actions, strict=True):
                worker.step(action)
            for worker in active:
                worker.receive()
            done = [worker for worker in active if worker.success or worker.steps >= max_steps]
            for worker in done:
                results.append(finish(worker, video_dir, video_prefix))
                progress.update()
                progress.set_postfix(success=f"{np.mean([r.success for r in results]):.2f}")
            start_next(done, pending)
            active = [worker for worker in pool if worker.job is not None]
    finally:
        progress.close()
        for worker in pool:  # all at once: a second Ctrl-C while joining still leaves every pipe closed
            worker.stop()
        for worker in pool:
            worker.join()
    return metrics(results, tasks)


def start_next(workers: list[Worker], pending: deque[Job]) -> list[Worker]:
    """Start the next pending episodes on ``workers`` (those left over go idle); the started ones."""
    started = []
    for worker in workers:
        worker.job = None
        if pending:
            worker.start(pending.popleft())
            started.append(worker)
    for worker in started:  # all reset in parallel, then read
        worker.receive()
    return started


def finish(worker: Worker, video_dir: Path | None, prefix: str) -> Result:
    """The worker's episode result; its video written if it is recorded."""
    assert worker.job is not None
    job = worker.job
    if job.record and video_dir is not None:
        write_video(video_dir / f"{prefix}_{job.task}_{job.index}.mp4", worker.recorded)
    return Result(job, worker.steps, worker.success)


def expert_policy() -> Policy:
    """Meta-World's scripted expert of each environment's task, acting on its state."""
    import_mujoco()  # metaworld imports MuJoCo: with the same MUJOCO_GL as the workers (nothing is rendered)
    from metaworld.policies import ENV_POLICY_MAP

    experts: dict[str, Any] = {}

    def act(obs: Observation) -> np.ndarray:
        actions = []
        for task, state in zip(obs.tasks, obs.states, strict=True):
            if task not in experts:
                experts[task] = ENV_POLICY_MAP[task]()
            actions.append(expert_action(experts[task], state.astype(np.float64)))
        return np.stack(actions)

    return act


def random_policy(seed: int) -> Policy:
    """Uniform actions in [-1, 1]^4 from one generator seeded with ``seed`` (its state carries over calls)."""
    rng = np.random.default_rng(seed)
    return lambda obs: rng.uniform(-1.0, 1.0, size=(len(obs.tasks), 4))
