"""``hlrp-lab push``, ``pull`` and ``list``: runs' result tables in the Hub dataset repo ``HF_REPO``."""

import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hlrp_lab.cli.errors import cli_errors
from hlrp_lab.lib.errors import RunError, SpecError
from hlrp_lab.lib.runs import DATA_ROOT

if TYPE_CHECKING:
    from hlrp_lab.lib.hub import HubTarget

Models = Annotated[bool, typer.Option("--upload-models", help="Upload model weights (.safetensors) too.")]


def push(
    run_dir: Annotated[Path, typer.Argument(help="A run directory, e.g. data/laq_debug_2026_11_22_150405")],
    upload_models: Models = False,
) -> None:
    """Upload a run's specs, result tables (Parquet + CSV) and graphs to HF_REPO under data/<run>/."""
    with cli_errors():
        upload(run_dir, upload_models)


def upload(run_dir: Path, models: bool) -> None:
    """Upload ``run_dir``; a failure leaves local results alone and names the command that retries."""
    from hlrp_lab.lib.hub import hub_target, upload_run

    target = hub_target()
    retry = ["hlrp-lab", "push", str(run_dir), *(["--upload-models"] if models else [])]
    with hub_failure(f"upload of {run_dir} to {target.repo}", "the local results are intact", retry):
        url = upload_run(run_dir, target, models)
    typer.echo(f"uploaded {run_dir} to {url}")


@contextmanager
def hub_failure(action: str, outcome: str, retry: list[str]) -> Iterator[None]:
    """Whatever fails underneath (network, Hub, disk) becomes one RunError: ``action failed (Type: message);
    outcome; retry with: RETRY``, secret values masked. The lab's own errors pass through as they are."""
    from hlrp_lab.lib.hub import env_settings
    from hlrp_lab.lib.scrub import error_line, secret_values

    try:
        yield
    except (SpecError, RunError):
        raise
    except Exception as err:  # noqa: BLE001 - network, Hub or disk: whatever failed, say how to retry
        cause = error_line(err, secret_values(env_settings()))
        raise RunError(f"{action} failed ({cause}); {outcome}; retry with: {shlex.join(retry)}") from None


def pull(
    pattern: Annotated[str, typer.Argument(help="Run name, spec name or glob (laq_*_2026_11_*)")],
    list_only: Annotated[bool, typer.Option("--list", help="Only list what would be pulled.")] = False,
) -> None:
    """Download matching runs from HF_REPO into data/, skipping runs that are already there."""
    with cli_errors():
        from hlrp_lab.lib.hub import check_run_names, hub_target, matching, remote_runs

        target = hub_target()
        runs = check_run_names(matching(remote_runs(target), pattern), target.repo)
        if not runs:
            typer.echo(f"no run in {target.repo} matches {pattern!r}; see `hlrp-lab list`", err=True)
            raise typer.Exit(1)
        if list_only:
            for run in runs:
                typer.echo(f"{run}  ({'exists locally' if (DATA_ROOT / run).exists() else 'to pull'})")
            return
        pulled = download(target, runs, pattern)
    for run in runs:
        typer.echo(f"{'pulled ' if run in pulled else 'skipped'} {DATA_ROOT / run}")


def download(target: "HubTarget", runs: list[str], pattern: str) -> list[str]:
    """``pull_runs`` into data/; a failure names the command that retries (a run cut short left nothing)."""
    from hlrp_lab.lib.hub import pull_runs

    outcome = "runs pulled so far are complete, the one cut short left nothing"
    with hub_failure(f"pull from {target.repo}", outcome, ["hlrp-lab", "pull", pattern]):
        return pull_runs(target, runs, DATA_ROOT)


def list_runs(
    pattern: Annotated[str, typer.Argument(help="Run name, spec name or glob; default: every run")] = "*",
) -> None:
    """List the runs in HF_REPO: spec, stage, mode and the best trial's metric."""
    with cli_errors():
        from hlrp_lab.lib.hub import RUNS_TABLE_HEADER, hub_target, matching, remote_runs, run_row

        target = hub_target()
        runs = remote_runs(target)
    names = matching(runs, pattern)
    typer.echo(f"{len(names)} runs in {target.repo}" + (f" matching {pattern!r}" if pattern != "*" else ""))
    if names:
        typer.echo(RUNS_TABLE_HEADER)
    for run in names:
        typer.echo(run_row(run, runs[run]))
