"""Search faults: joining a real `ray start --head` cluster (with token authentication, with a wrong token,
with nothing listening), and a Ray worker SIGKILLed while its trial trains."""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psutil
import pytest

from hlrp_lab.experiment.search import init_ray
from hlrp_lab.lib.errors import RunError
from tests.conftest import tiny_spec_dict

RAY_CLI = Path(sys.executable).with_name("ray")
AUTH_VARIABLES = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment with ``home`` as HOME (its ``.ray/auth_token``), no Ray address or auth settings of
    the test process (an earlier local ray.init sets RAY_AUTH_MODE), and ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARIABLES}
    return {**env, "HOME": str(home), "TQDM_DISABLE": "1", "RAY_USAGE_STATS_ENABLED": "0", **extra}


def tiny_search_file(root: Path, cache: Path) -> Path:
    """A 2-trial search of the tiny spec (a grid of two learning rates, no ASHA)."""
    spec = tiny_spec_dict(cache)
    spec["train"].update(max_step=4, eval_frequency=2, log_frequency=2)
    spec["meta"].update(max_trial=1, search_scheduler=None)
    spec["search"] = {"optim.lr__grid_search": [1e-3, 3e-3]}
    path = root / "specs.json"
    path.write_text(json.dumps({"tiny": spec}))
    return path


def run_cli(
    args: list[str], cwd: Path, env: dict[str, str], timeout: int = 400
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hlrp_lab", *args],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def own_processes(root: psutil.Process | None, temp_dir: Path) -> list[psutil.Process]:
    """``root``, the processes whose command line names ``temp_dir`` (this head's), and their descendants."""
    found = [root] if root is not None else []
    for process in psutil.process_iter(["cmdline"]):
        if str(temp_dir) in " ".join(process.info["cmdline"] or []):
            found.append(process)
    family = {p.pid: p for top in found for p in (top, *safe_children(top))}
    return list(family.values())


def safe_children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory) -> Iterator[tuple[str, Path, Path]]:
    """`ray start --head` on 127.0.0.1 as docs/SEARCH.md starts it, with token authentication on (the token
    in ~/.ray/auth_token of a temporary HOME, as a local Ray writes it) and its own temp dir; yields its
    address, that HOME and the temp dir. Stopped afterwards by killing its own processes (not `ray stop`,
    which stops every Ray on the machine)."""
    home = tmp_path_factory.mktemp("home")
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    temp_dir = Path(tempfile.mkdtemp(prefix="hlrp-ray-"))  # short: Ray's socket paths must fit 107 chars
    port = free_port()
    log = temp_dir / "start.log"
    command = [str(RAY_CLI), "start", "--head", "--block", f"--port={port}", "--num-cpus=2"]
    command += ["--include-dashboard=false", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    with log.open("w") as out:
        head = subprocess.Popen(command, env=clean_env(home), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "ray start --head did not start in 120 s"
            time.sleep(0.5)
        assert "Token authentication is enabled" in log.read_text()
        yield f"127.0.0.1:{port}", home, temp_dir
    finally:
        processes = own_processes(psutil.Process(head.pid), temp_dir)
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        for process in processes:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(processes, timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_a_search_joins_a_token_authenticated_head_at_ray_address(ray_head, tmp_path, shard_cache):
    address, home, temp_dir = ray_head
    spec_file = tiny_search_file(tmp_path, shard_cache)
    done = run_cli(["run", str(spec_file), "tiny", "search"], tmp_path, clean_env(home, RAY_ADDRESS=address))
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (tmp_path / "data").glob("tiny_*")
    table = pd.read_csv(run_dir / "info" / "tiny_experiment.csv")
    assert sorted(table["trial"]) == [0, 1] and set(table["status"]) == {"completed"}
    drivers = list((temp_dir / "session_latest" / "logs").glob("python-core-driver-*.log"))
    assert drivers, "the search did not join the head (no driver log in its session)"


@pytest.mark.slow
def test_a_wrong_token_is_one_line_naming_the_address_quickly(ray_head, tmp_path, shard_cache):
    address, home, _ = ray_head
    spec_file = tiny_search_file(tmp_path, shard_cache)
    env = clean_env(home, RAY_ADDRESS=address, RAY_AUTH_TOKEN=secrets.token_hex(32))
    done = run_cli(["run", str(spec_file), "tiny", "search"], tmp_path, env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: RAY_ADDRESS={address}: the Ray cluster uses token authentication and refused this driver; "
        "run with RAY_AUTH_MODE=token and the head's token (its ~/.ray/auth_token copied to this machine's "
        "~/.ray/auth_token, or RAY_AUTH_TOKEN=<token>); see docs/SEARCH.md"
    )
    assert "Traceback" not in done.stderr
    retries = done.stderr.count("Failed to get cluster ID")
    assert 1 <= retries <= 8  # Ray's default is 20 one-second retries


def test_nothing_listening_at_ray_address_is_one_line_within_seconds(monkeypatch):
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    start = time.monotonic()
    message = (
        rf"^RAY_ADDRESS={re.escape(address)}: no Ray head answers there \(Connection refused\); start one "
        rf"with `ray start --head --port {address.split(':')[1]}` on 127\.0\.0\.1, or fix or unset RAY_ADDRESS"
    )
    with pytest.raises(RunError, match=message):
        init_ray()
    assert time.monotonic() - start < 10


@pytest.mark.slow
def test_a_worker_killed_mid_trial_fails_that_trial_and_the_search_goes_on(tmp_path, shard_cache):
    spec_file = tiny_search_file(tmp_path, shard_cache)
    spec = json.loads(spec_file.read_text())
    spec["tiny"]["train"].update(eval_frequency=10, log_frequency=10)
    spec["tiny"]["search"] = {"train.max_step__grid_search": [5000, 10, 10]}  # t0 trains until killed
    spec_file.write_text(json.dumps(spec))
    driver = subprocess.Popen(
        [sys.executable, "-m", "hlrp_lab", "run", str(spec_file), "tiny", "search"],
        cwd=tmp_path,
        env=clean_env(tmp_path / "home"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pid = first_reported_pid(tmp_path, "tiny_t0", driver)
        worker = psutil.Process(pid)
        assert worker in psutil.Process(driver.pid).children(recursive=True)  # our Ray's worker only
        worker.send_signal(signal.SIGKILL)
        _, stderr = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, stderr[-3000:]
    (run_dir,) = (tmp_path / "data").glob("tiny_*")
    table = pd.read_csv(run_dir / "info" / "tiny_experiment.csv").set_index("trial").sort_index()
    assert list(table["status"]) == ["failed", "completed", "completed"]
    assert table.loc[0, "error"].startswith("ActorDiedError: ")
    assert 10 <= table.loc[0, "step"] < 5000
    assert list(table["step"][1:]) == [10, 10]
    assert "tiny_t0 failed; the search goes on" in stderr


def first_reported_pid(root: Path, trial: str, driver: subprocess.Popen) -> int:
    """The pid of the Ray worker running ``trial``, from its first Tune result (Tune records it)."""
    deadline = time.monotonic() + 300
    while True:
        results = list(root.glob(f"data/tiny_*/ray/tune/{trial}/result.json"))
        lines = results[0].read_text().splitlines() if results else []
        if lines and lines[0].endswith("}"):
            return json.loads(lines[0])["pid"]
        assert driver.poll() is None, driver.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{trial} reported nothing in 300 s"
        time.sleep(0.2)
