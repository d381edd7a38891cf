"""Search mode: Ray Tune samples trials from the spec's ``search`` block; ASHA stops unpromising ones early.

Ray starts locally (or joins the cluster at ``RAY_ADDRESS``, or the instance the caller started) and keeps
its files under the run directory (``RunLayout.ray``, one folder per trial named ``RunLayout.stem(trial)``
under ``tune/``). A cluster that cannot be joined is a
one-line RunError within seconds; a trial whose worker dies is recorded as failed and the search goes on.
"""

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

from hlrp_lab.experiment.results import COMPLETED, FAILED, INTERRUPTED, STOPPED_EARLY, TrialRecord
from hlrp_lab.lib.errors import RunError, first_line
from hlrp_lab.lib.layout import RunLayout
from hlrp_lab.spec.search_space import LOG_SAMPLERS, SearchKey, parse_search, search_metric, trial_spec
from hlrp_lab.stages import STAGES

# Set before Ray is imported (an environment variable already set wins): no usage statistics; trials keep
# the lab's working directory; under `uv run`, Ray does not package the lab and build a virtual environment
# per worker (the workers use this environment).
RAY_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
}
# Joining a cluster: seconds to wait for a TCP connection to RAY_ADDRESS, and seconds Ray retries its
# connection (Ray's default is 20, 120 for a RocksDB GCS; a variable already set wins).
CONNECT_TIMEOUT_S = 5
JOIN_WAIT, JOIN_WAIT_S = "RAY_gcs_server_port_wait_time_s", "5"


@dataclass
class SearchOutcome:
    records: list[TrialRecord]  # by trial index
    params: list[str]  # the searched spec paths
    log_params: set[str]  # those sampled on a log scale
    interrupted: bool  # Ctrl-C: some trials neither ended nor failed


def set_ray_defaults() -> None:
    """Set ``RAY_DEFAULTS`` not already set; call before Ray is imported."""
    for name, value in RAY_DEFAULTS.items():
        os.environ.setdefault(name, value)


def run_search(spec: dict) -> SearchOutcome:
    """Run every trial of ``spec``'s search with Ray Tune and record how each ended."""
    set_ray_defaults()
    import ray

    from hlrp_lab.experiment.tune_trial import TrialLog

    keys = parse_search(spec["search"])
    log = TrialLog(keys, search_target(spec)[0])
    owns_ray = not ray.is_initialized()
    if owns_ray:
        init_ray()
    try:
        grid = make_tuner(spec, keys, log).fit()
    finally:
        if owns_ray:
            ray.shutdown()
    started = [result for result in grid if result.config is not None]  # Ctrl-C leaves some never started
    records = sorted(
        (trial_record(spec, keys, result, log.ended) for result in started), key=lambda r: r.trial
    )
    return SearchOutcome(
        records,
        [key.path for key in keys],
        {key.path for key in keys if key.sampler in LOG_SAMPLERS},
        any(record.status == INTERRUPTED for record in records),
    )


def init_ray() -> None:
    """Join the cluster at ``RAY_ADDRESS`` if set, else start a new Ray instance on this machine (even if a
    cluster started by `ray start` runs here), without dashboard."""
    import ray

    address = os.environ.get("RAY_ADDRESS")
    if address:
        join_cluster(address)
    else:
        ray.init("local", include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)


def join_cluster(address: str) -> None:
    """Join the Ray cluster at ``address``; one that cannot be joined is a RunError naming it, within seconds.

    A head on this machine that uses token authentication wrote its token where this driver finds it
    (``~/.ray/auth_token``, ``RAY_AUTH_TOKEN_PATH`` or ``RAY_AUTH_TOKEN``): the driver uses it, as Ray does for
    ``RAY_ADDRESS=auto``. A remote head gets this machine's token only when ``RAY_AUTH_MODE=token`` says so.
    """
    import ray
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    host_port = check_ray_address()
    if host_port is not None and is_local_host(host_port[0]):
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    with env_default(JOIN_WAIT, JOIN_WAIT_S):
        try:
            ray.init(log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, ray.exceptions.RayError) as error:
            raise RunError(join_error(address, error)) from None


def host_and_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``host:port`` address; None for ``auto`` and ``ray://`` addresses."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_ray_address() -> tuple[str, int] | None:
    """When ``RAY_ADDRESS`` is ``host:port``: a RunError unless something accepts connections there within
    ``CONNECT_TIMEOUT_S`` (no Ray import; a search can call it before writing anything); its host and port."""
    address = os.environ.get("RAY_ADDRESS", "")
    host_port = host_and_port(address)
    if host_port is None:
        return None
    host, port = host_port
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise RunError(
            f"RAY_ADDRESS={address}: no Ray head answers there ({error.strerror or error}); start one with "
            f"`ray start --head --port {port}` on {host}, or fix or unset RAY_ADDRESS (docs/SEARCH.md)"
        ) from None
    return host_port


def is_local_host(host: str) -> bool:
    """Whether ``host`` is an address of this machine (a socket can bind to it)."""
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)[0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((sockaddr[0], 0))
    except OSError:
        return False
    return True


@contextmanager
def env_default(name: str, value: str) -> Iterator[None]:
    """Environment variable ``name`` set to ``value`` within the block, unless it is set already."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


def join_error(address: str, error: BaseException) -> str:
    """One line for a failed ``ray.init`` at ``address``: a refused token, or what Ray said last."""
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    said = " ".join(f"{type(e).__name__}: {e}" for e in chain)
    if "AuthenticationError" in said or "InvalidAuthToken" in said:
        return (
            f"RAY_ADDRESS={address}: the Ray cluster uses token authentication and refused this driver; "
            "run with RAY_AUTH_MODE=token and the head's token (its ~/.ray/auth_token copied to this "
            "machine's ~/.ray/auth_token, or RAY_AUTH_TOKEN=<token>); see docs/SEARCH.md"
        )
    return (
        f"RAY_ADDRESS={address}: cannot join the Ray cluster ({first_line(chain[-1])}); check "
        f"that `ray status --address {address}` works here, or unset RAY_ADDRESS to run on this machine"
    )


def search_target(spec: dict) -> tuple[str, str]:
    """The metric a search goes by and its mode: ``meta.search_metric``, else the stage's metric."""
    stage = STAGES.config_class(spec["stage"], "stage")
    return search_metric(spec) or (stage.metric, stage.metric_mode)


def make_tuner(spec: dict, keys: list[SearchKey], log: Any) -> Any:
    """The Tuner: trials named by their stem (``RunLayout.stem(trial)``), the search's metric, the meta
    block's search settings."""
    from ray import tune

    from hlrp_lab.experiment.tune_trial import run_trial

    meta, layout = spec["meta"], RunLayout.of(spec)
    metric, mode = search_target(spec)
    indices = count()

    def trial_name(trial: Any) -> str:
        return layout.stem(next(indices))

    resources = meta["search_resources"]
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec=spec, keys=keys, lab_dir=str(Path.cwd())),
        {"cpu": resources["cpu"], "gpu": resources["gpu"]},
    )
    return tune.Tuner(
        trainable,
        param_space={key.path: key.domain() for key in keys},
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            search_alg=search_algorithm(meta),
            scheduler=scheduler(spec),
            num_samples=meta["max_trial"],
            trial_name_creator=trial_name,
            trial_dirname_creator=lambda trial: trial.custom_trial_name,
            # A fresh actor per trial: a trial ASHA stops is still ending its sessions (seconds), and Ray fails
            # the next trial it gives a busy reused actor ("reuse requires reset_config() ... True").
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(layout.ray.absolute()),
            callbacks=[log],
            verbose=0,
        ),
    )


def search_algorithm(meta: dict) -> Any:
    """Random sampling, or Optuna's TPE; both seeded by ``meta.random_seed``."""
    if meta["search_algorithm"] == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=meta["random_seed"])
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=meta["random_seed"])


def scheduler(spec: dict) -> Any:
    """ASHA on the reported ``step`` when ``meta.search_scheduler`` is set; else every trial runs to the end."""
    config = spec["meta"]["search_scheduler"]
    if config is None:
        return None
    from ray.tune.schedulers import AsyncHyperBandScheduler

    return AsyncHyperBandScheduler(
        time_attr="step",
        max_t=config["max_t"] or spec["train"]["max_step"],
        grace_period=config["grace_period"],
        reduction_factor=config["reduction_factor"],
    )


def trial_record(spec: dict, keys: list[SearchKey], result: Any, ended: set[str]) -> TrialRecord:
    """How one Tune trial ended: failed (with its error), completed, stopped early, or interrupted."""
    name = Path(result.path).name
    trial, applied = trial_spec(spec, keys, result.config, RunLayout.of(spec).trial_of(name))
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}
    record = TrialRecord(trial["meta"]["trial"], INTERRUPTED, metrics, trial, applied)
    if result.error is not None:
        record.status, record.error = FAILED, error_summary(result.error)
    elif name in ended:
        done = metrics.get("step", 0) >= trial["train"]["max_step"]
        record.status = COMPLETED if done else STOPPED_EARLY
    return record


def error_summary(error: BaseException) -> str:
    """``Type: first line of the message`` of what a trial raised (Ray wraps it: its ``cause``)."""
    return first_line(getattr(error, "cause", None) or error)
