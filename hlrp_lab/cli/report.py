"""``hlrp-lab report``: rebuild a run's self-contained HTML report (no torch, no ray)."""

from pathlib import Path
from typing import Annotated

import typer

from hlrp_lab.cli.errors import cli_errors


def report(
    target: Annotated[
        str,
        typer.Argument(
            help="A run directory, a .safetensors file of a run, or latest:<spec> (latest-dev:<spec> lets dev "
            "runs count)."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option("-o", "--out", help="Where to write the page (default: RUN_DIR/report.html)."),
    ] = None,
) -> None:
    """Write a run's report.html: its spec, trial metrics, curves, pictures, rollout videos and provenance in
    one offline page (docs/REPORT.md)."""
    with cli_errors():
        from hlrp_lab.experiment.report import write_report
        from hlrp_lab.lib.layout import RunLayout
        from hlrp_lab.lib.runs import LATEST, LATEST_DEV, resolve_reference

        if target.startswith((LATEST, LATEST_DEV)):
            reference = resolve_reference(target, "TARGET")
            path = write_report(reference.run_dir, reference.spec_name, out)
        else:
            path = write_report(RunLayout.run_dir_of(Path(target)), None, out)
    typer.echo(f"wrote {path}")
