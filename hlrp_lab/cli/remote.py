"""``hlrp-lab run-remote``: a run on a cloud machine through dstack; its results come back through the Hub.

The spec is checked here first. The framework keys always, in this process (no torch); the components too
when the training dependencies are installed, in a child process (``hlrp-lab spec show``), so that this
command stays light and gives the errors ``run`` would give.
"""

import itertools
import os
import re
import shlex
import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Annotated

import pydash
import typer

from hlrp_lab.cli.errors import cli_errors
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.scrub import MASK, is_secret_name

DSTACK_DIR = Path(".dstack")
RUN_NAME = re.compile(r"[a-z][a-z0-9-]{1,40}")
REMOTE_MODES = ("dev", "train", "search")
NOT_SET = "(not set)"
RUN_REFERENCE_KEYS = ("train.init_from", "data.source.laq")  # runs a later stage starts from


def run_remote(
    spec_file: Annotated[
        Path, typer.Argument(help="JSON spec file inside this checkout, e.g. specs/laq.json")
    ],
    spec_name: Annotated[str, typer.Argument(help="Name of a spec in that file")],
    mode: Annotated[str, typer.Argument(help="dev | train | search")] = "train",
    gpu: Annotated[bool, typer.Option("--gpu", help="Run on a GPU machine (.dstack/run-gpu-*.yml).")] = False,
    name: Annotated[
        str | None, typer.Option("-n", "--name", help="dstack run name (default: spec name and time).")
    ] = None,
    sets: Annotated[
        list[str] | None, typer.Option("-s", "--set", help="KEY=VALUE, as in `run`. Repeatable.")
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Check everything, print the command and environment, launch nothing."
        ),
    ] = False,
) -> None:
    """Launch `hlrp-lab run SPEC_FILE SPEC_NAME MODE --upload-hf` on a cloud machine with dstack."""
    sets = sets or []
    with cli_errors():
        from hlrp_lab.lib.hub import hub_target

        if mode not in REMOTE_MODES:
            raise SpecError(f"mode {mode!r}: run-remote takes one of {', '.join(REMOTE_MODES)}")
        relative = project_path(spec_file)
        config = dstack_config(gpu, mode)
        run_name = name or default_run_name(spec_name)
        if not RUN_NAME.fullmatch(run_name):
            raise SpecError(
                f"-n {run_name!r}: dstack run names are 2-41 of a-z, 0-9 and -, starting with a letter"
            )
        if dry_run:
            check_spec_locally(relative, spec_name, mode, sets)
            show_launch(apply_args(config, run_name), launch_env(relative, spec_name, mode, sets), sets)
            return
        target = hub_target()
        dstack = shutil.which("dstack")
        if dstack is None:
            raise SpecError(
                "dstack is not installed; install it with `uv tool install dstack` and run `dstack init`"
            )
        check_spec_locally(relative, spec_name, mode, sets)  # last: the slowest check
    command = [dstack, *apply_args(config, run_name)]
    env = {**launch_env(relative, spec_name, mode, sets), "HF_TOKEN": target.token, "HF_REPO": target.repo}
    typer.echo(f"launching {run_name}: {shlex.join(command)}")
    completed = subprocess.run(command, env={**os.environ, **env}, check=False)
    if completed.returncode != 0:
        typer.echo(f"error: dstack apply exited with code {completed.returncode}", err=True)
        raise typer.Exit(completed.returncode)
    typer.echo(
        f"follow it with `dstack logs {run_name}`; results go to {target.repo}: `hlrp-lab pull {spec_name}`"
    )


def apply_args(config: Path, run_name: str) -> list[str]:
    """``dstack``'s arguments that launch ``config`` as ``run_name``."""
    return ["apply", "-f", str(config), "-y", "--detach", "--name", run_name]


def launch_env(spec_file: Path, spec_name: str, mode: str, sets: list[str]) -> dict[str, str]:
    """The run's variables for the machine, but the Hub settings (``HF_REPO``, ``HF_TOKEN``)."""
    return {
        "SPEC_FILE": spec_file.as_posix(),
        "SPEC_NAME": spec_name,
        "LAB_MODE": mode,
        "SPEC_VARS": shlex.join(arg for value in sets for arg in ("-s", value)),
    }


def show_launch(args: list[str], env: dict[str, str], sets: list[str]) -> None:
    """--dry-run: the command and its environment (secrets masked), and what a real launch would still need
    (``HF_REPO``, ``HF_TOKEN``, dstack); none of those is needed to show it."""
    from hlrp_lab.lib.hub import env_settings, missing_settings

    dstack, settings = shutil.which("dstack"), env_settings()
    shown = {
        **env,
        "SPEC_VARS": shlex.join(masked_sets(sets)),
        "HF_TOKEN": MASK if settings.get("HF_TOKEN") else NOT_SET,
        "HF_REPO": settings.get("HF_REPO") or NOT_SET,
    }
    typer.echo(shlex.join([dstack or "dstack", *args]))
    for key, value in shown.items():
        typer.echo(f"{key}={value}")
    missing = [*missing_settings(), *([] if dstack else ["dstack (uv tool install dstack)"])]
    if missing:
        typer.echo(f"missing for a real launch: {', '.join(missing)}")


def masked_sets(sets: list[str]) -> list[str]:
    """The -s options to show, with the values of keys named like a secret masked."""
    shown = []
    for value in sets:
        key = value.partition("=")[0]
        shown += ["-s", f"{key}={MASK}" if is_secret_name(key.rpartition(".")[2]) else value]
    return shown


def project_path(spec_file: Path) -> Path:
    """``spec_file`` relative to this checkout, which is what dstack uploads; it must lie inside it."""
    if not spec_file.is_file():
        raise SpecError(f"spec file not found: {spec_file}")
    try:
        return spec_file.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        raise SpecError(
            f"{spec_file}: outside this checkout; dstack uploads only the directory it runs from"
        ) from None


def check_run_references(spec: dict) -> None:
    """Refuse runs named on this machine (``latest:``, relative paths): run-remote uploads no data/."""
    from hlrp_lab.lib.runs import local_run_references

    relative = [(key, pydash.get(spec, key)) for key in RUN_REFERENCE_KEYS]
    relative = [
        (key, value) for key, value in relative if isinstance(value, str) and not Path(value).is_absolute()
    ]
    found = next(itertools.chain(relative, local_run_references(spec)), None)
    if found is not None:
        raise SpecError(
            f"{found[0]}: {found[1]} names a run under data/, which run-remote does not upload "
            "(.dstackignore); give an absolute path on a volume the remote machine mounts"
        )


def check_spec_locally(spec_file: Path, spec_name: str, mode: str, sets: list[str]) -> None:
    """The checks of ``run`` before launch that need no torch: every key, component and search entry."""
    from hlrp_lab.spec.check import check_spec
    from hlrp_lab.spec.search_space import check_search_mode
    from hlrp_lab.spec.spec_util import parse_sets, resolve_spec

    spec = check_spec(resolve_spec(spec_file, spec_name, parse_sets(sets)))
    check_run_references(spec)
    check_search_mode(spec, spec_name, mode)


def dstack_config(gpu: bool, mode: str) -> Path:
    config = DSTACK_DIR / f"run-{'gpu' if gpu else 'cpu'}-{'search' if mode == 'search' else 'train'}.yml"
    if not config.is_file():
        raise SpecError(f"{config} not found; run run-remote from the root of the hlrp-lab checkout")
    return config


def default_run_name(spec_name: str) -> str:
    """``{spec-name}-{MMDD-HHMMSS}``: dstack replaces a running run of the same name, so names are unique."""
    stem = re.sub(r"[^a-z0-9-]+", "-", spec_name.lower()).strip("-")[:28] or "run"
    stem = stem if stem[0].isalpha() else f"r-{stem}"
    return f"{stem}-{datetime.now():%m%d-%H%M%S}"
