"""Result tables on the HuggingFace Hub, in a dataset repo (``HF_REPO``, token ``HF_TOKEN``).

The repo holds each run under ``data/<run dir name>/``, ``index.json`` (run -> summary) and a dataset card
(README.md) that lists the runs and points the Hub's dataset viewer at their tables. An upload is one
commit: the run's files, the index and the card; a commit that raced another upload is retried on top of
it, so no run drops out of the index.
"""

import fnmatch
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values
from huggingface_hub import CommitOperationAdd, DatasetCard, DatasetCardData, HfApi
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError
from loguru import logger

from hlrp_lab.lib.bundle import run_bundle
from hlrp_lab.lib.errors import RunError, SpecError
from hlrp_lab.lib.layout import INFO, RunLayout
from hlrp_lab.lib.names import check_name
from hlrp_lab.lib.scrub import secret_values

RUNS_FOLDER = "data"
INDEX = "index.json"
CARD = "README.md"
PARQUET = ".parquet"  # the dataset viewer reads the Parquet copies of a run's tables
COMMIT_ATTEMPTS = 3
CONFLICT = {409, 412}  # the branch moved since ``parent_commit``
ENV_FILE = Path(".env")
RUNS_TABLE_HEADER = "| run | spec | stage | mode | trials | metric | mean ± std |\n| --- | --- | --- | --- | --- | --- | --- |"


@dataclass(frozen=True)
class HubTarget:
    """Where results go: the dataset repo, the token, the Hub endpoint (``HF_ENDPOINT``; None: huggingface.co)."""

    repo: str
    token: str
    endpoint: str | None = None


def env_settings(env_file: Path = ENV_FILE) -> dict[str, str]:
    """``.env`` values overridden by the environment."""
    file_values = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    return {**file_values, **os.environ}


def missing_settings(env_file: Path = ENV_FILE) -> list[str]:
    """The settings of ``hub_target`` that are not set (``HF_REPO``, ``HF_TOKEN``)."""
    settings = env_settings(env_file)
    return [name for name in ("HF_REPO", "HF_TOKEN") if not settings.get(name)]


def hub_target(env_file: Path = ENV_FILE) -> HubTarget:
    """The target from ``HF_REPO``, ``HF_TOKEN`` and ``HF_ENDPOINT`` in the environment or ``.env``."""
    settings = env_settings(env_file)
    if not settings.get("HF_REPO"):
        raise SpecError(
            "HF_REPO is not set: name the results dataset repo, e.g. HF_REPO=your-name/hlrp-results"
        )
    if not settings.get("HF_TOKEN"):
        raise SpecError(
            "HF_TOKEN is not set: put a Hub write token (https://huggingface.co/settings/tokens) in the "
            "environment or in .env"
        )
    return HubTarget(settings["HF_REPO"], settings["HF_TOKEN"], settings.get("HF_ENDPOINT") or None)


def hub_api(target: HubTarget) -> HfApi:
    return HfApi(endpoint=target.endpoint, token=target.token)


def upload_run(run_dir: Path, target: HubTarget, models: bool = False) -> str:
    """Upload ``run_dir``'s results (weights too with ``models``); returns the commit's URL."""
    path = Path(os.path.abspath(run_dir))  # `push .` names its directory too
    run_name = check_name(path.name, "run directory name")  # it becomes a folder of the repo
    if not (path / INFO).is_dir():
        raise SpecError(f"{run_dir}: not a run directory (no {INFO}/ folder)")
    bundle = run_bundle(path, secret_values(env_settings()), models)
    api = hub_api(target)
    api.create_repo(target.repo, repo_type="dataset", private=True, exist_ok=True)
    files = [
        CommitOperationAdd(f"{RUNS_FOLDER}/{run_name}/{name}", data) for name, data in bundle.files.items()
    ]
    for attempt in range(1, COMMIT_ATTEMPTS):
        try:
            return commit_run(api, target.repo, run_name, files, bundle.summary)
        except HfHubHTTPError as err:
            if err.response is None or err.response.status_code not in CONFLICT:
                raise
            logger.info(f"{target.repo} changed during the upload; retrying ({attempt}/{COMMIT_ATTEMPTS})")
    return commit_run(api, target.repo, run_name, files, bundle.summary)


def commit_run(api: HfApi, repo: str, run: str, files: list[CommitOperationAdd], summary: dict) -> str:
    """One commit on top of the current head: the run's files, the index with the run, the card."""
    head = api.repo_info(repo, repo_type="dataset").sha
    index = {**read_index(api, repo, head), run: summary}
    listing = [
        CommitOperationAdd(INDEX, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()),
        CommitOperationAdd(CARD, dataset_card(repo, index).encode()),
    ]
    commit = api.create_commit(
        repo, files + listing, commit_message=f"Add run {run}", repo_type="dataset", parent_commit=head
    )
    logger.info(f"uploaded {len(files)} files of {run} to {repo}")
    return commit.commit_url


def read_index(api: HfApi, repo: str, revision: str) -> dict[str, dict]:
    """The repo's ``index.json`` at ``revision`` (empty for a new repo)."""
    try:
        path = api.hf_hub_download(repo, INDEX, repo_type="dataset", revision=revision)
    except EntryNotFoundError:
        return {}
    return json.loads(Path(path).read_text())


def dataset_card(repo: str, index: dict[str, dict]) -> str:
    """README.md: one viewer config per table of each run, and a table of the runs."""
    configs = []
    for run in sorted(index):
        folder = f"{RUNS_FOLDER}/{run}"
        configs.append(config(run, f"{folder}/{RunLayout.trial_metrics_glob(PARQUET)}"))
        configs.append(config(f"{run}-sessions", f"{folder}/{RunLayout.session_metrics_glob(PARQUET)}"))
        if index[run].get("mode") == "search":
            configs.append(
                config(f"{run}-experiment", f"{folder}/{RunLayout.experiment_table_glob(PARQUET)}")
            )
    data = DatasetCardData(
        pretty_name=f"hlrp-lab results: {repo}", tags=["hlrp-lab", "robotics"], configs=configs
    )
    rows = "\n".join(run_row(run, index[run]) for run in sorted(index))
    body = (
        f"# hlrp-lab results\n\nRuns of hlrp-lab uploaded with `hlrp-lab push` or `--upload-hf`; fetch them "
        f"with `HF_REPO={repo} hlrp-lab pull PATTERN`.\n\n"
        f"{RUNS_TABLE_HEADER}\n{rows}\n"
    )
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def config(name: str, path: str) -> dict:
    return {"config_name": name, "data_files": [{"split": "train", "path": path}]}


def run_row(run: str, summary: dict) -> str:
    score = ""
    if summary.get("mean") is not None:
        std = summary.get("std")
        score = f"{summary['mean']:.4g}" + (f" ± {std:.2g}" if std is not None else "")
    cells = [run, summary.get("spec_name"), summary.get("stage"), summary.get("mode"), summary.get("trials")]
    return (
        "| "
        + " | ".join(str(c) if c is not None else "" for c in [*cells, summary.get("metric"), score])
        + " |"
    )


def remote_runs(target: HubTarget) -> dict[str, dict]:
    """Run name -> summary of every run in the repo."""
    api = hub_api(target)
    try:
        head = api.repo_info(target.repo, repo_type="dataset").sha
    except RepositoryNotFoundError:
        raise RunError(
            f"{target.repo}: no such dataset repo on the Hub (or the token cannot read it)"
        ) from None
    return read_index(api, target.repo, head)


def matching(runs: dict[str, dict], pattern: str) -> list[str]:
    """Runs whose name matches the glob ``pattern`` (a bare spec name matches its runs: ``laq_debug``)."""
    globs = [pattern] if any(c in pattern for c in "*?[") else [pattern, f"{pattern}_*"]
    return sorted(run for run in runs if any(fnmatch.fnmatchcase(run, g) for g in globs))


def check_run_names(runs: list[str], repo: str) -> list[str]:
    """``runs`` named in the repo's index, each a safe path component: an entry such as ``../../x`` must not
    make ``pull`` write outside ``data/``."""
    for run in runs:
        try:
            check_name(run, "run")
        except SpecError as err:
            raise RunError(
                f"{repo}/{INDEX}: {err}; nothing was pulled: remove or rename that entry in the repo"
            ) from None
    return runs


def pull_runs(target: HubTarget, runs: list[str], dest: Path) -> list[str]:
    """Download ``runs`` into ``dest/<run>/``, skipping those already there; returns the ones pulled.

    Each run is downloaded beside its destination and renamed into place, so a failed pull leaves nothing.
    """
    check_run_names(runs, target.repo)
    api = hub_api(target)
    dest.mkdir(parents=True, exist_ok=True)
    pulled = []
    for run in runs:
        if (dest / run).exists():
            logger.info(f"{dest / run} exists; skipped")
            continue
        with tempfile.TemporaryDirectory(dir=dest, prefix=".pull-") as tmp:
            api.snapshot_download(
                target.repo, repo_type="dataset", allow_patterns=f"{RUNS_FOLDER}/{run}/*", local_dir=tmp
            )
            if not (Path(tmp) / RUNS_FOLDER / run).is_dir():
                raise RunError(f"{target.repo}: {INDEX} lists {run} but {RUNS_FOLDER}/{run}/ holds no files")
            (Path(tmp) / RUNS_FOLDER / run).rename(dest / run)
        pulled.append(run)
    return pulled
