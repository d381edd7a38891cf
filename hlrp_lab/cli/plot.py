"""``hlrp-lab plot`` and ``plot-list``: metric curves of several runs on one graph (no torch, no ray)."""

from pathlib import Path
from typing import Annotated

import typer

from hlrp_lab.cli.errors import cli_errors


def plot(
    runs: Annotated[
        str,
        typer.Option(
            "-f",
            "--runs",
            help="Comma-separated runs: run directories (paths), their names under data/, or spec names "
            "(the spec's newest run). A search run plots its best trial that has session metrics.",
        ),
    ],
    title: Annotated[
        str | None, typer.Option("-t", "--title", help="Graph title; also names the files.")
    ] = None,
    legends: Annotated[
        str | None,
        typer.Option("-l", "--legends", help="Comma-separated legends, one per run (default: spec names)."),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            "-m",
            "--metric",
            help="Column of the session metrics to plot (default: the stage's metric, e.g. val_psnr, "
            "as the first run recorded it; loss if it did not). `hlrp-lab plot-list` shows the columns.",
        ),
    ] = None,
    out_dir: Annotated[
        Path,
        typer.Option("-o", "--out-dir", help="Where the PNG and HTML go, e.g. docs/plots to publish them."),
    ] = Path("data/plots"),
) -> None:
    """A metric against training step for several runs on one graph: the mean over each run's sessions
    with a ±1 std band, as OUT_DIR/{title or metric_spec_vs_spec}.png and an interactive .html."""
    with cli_errors():
        from hlrp_lab.experiment.compare import plot_runs

        plotted, paths = plot_runs(split(runs), metric, split(legends) if legends else None, title, out_dir)
    for sessions in plotted:
        count = len(sessions.histories)
        typer.echo(f"{sessions.run.path}: trial {sessions.trial}, {count} session{'s' * (count > 1)}")
    for path in paths:
        typer.echo(f"wrote {path}")


def plot_list() -> None:
    """List the runs under data/ and what `hlrp-lab plot` can draw from each: the trial it plots, its
    sessions and the metrics they logged."""
    from hlrp_lab.experiment.compare import DATA_ROOT, LIST_HEADER, find_runs, list_row

    runs = find_runs()
    if not runs:
        typer.echo(f"no run directories under {DATA_ROOT}/")
        return
    rows = [LIST_HEADER, *(list_row(run) for run in runs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(LIST_HEADER) - 1)]
    for row in rows:
        typer.echo("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]))


def split(text: str) -> list[str]:
    """Comma-separated names, blanks dropped."""
    return [name.strip() for name in text.split(",") if name.strip()]
