"""``hlrp-lab pipeline``: a pipeline's stage specs run in order, completed runs of the same spec reused, and
one study report at the end (docs/PIPELINE.md). The experiment layer is imported inside the command."""

from pathlib import Path
from typing import Annotated

import typer

from hlrp_lab.cli.errors import cli_errors
from hlrp_lab.cli.sync import Models, upload


def pipeline(
    spec_file: Annotated[Path, typer.Argument(help="JSON pipeline file, e.g. specs/pipeline.json")],
    name: Annotated[str, typer.Argument(help="Name of a pipeline in that file, e.g. chain_debug")],
    mode: Annotated[
        str,
        typer.Argument(
            help="train: each step in its own mode | dev: every training step in dev mode (a quick check)"
        ),
    ] = "train",
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "-s",
            "--set",
            help="KEY=VALUE: fill ${KEY} in the pipeline, or STEP.KEY=VALUE: set a key of that step's spec "
            "(laq.train.max_step=100). Repeatable.",
        ),
    ] = None,
    force: Annotated[
        list[str] | None,
        typer.Option(
            "--force", help="Run this step even when a completed run of the same spec exists. Repeatable."
        ),
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(min=1, help="Sessions (seeds, meta.max_session) of every training step."),
    ] = None,
    upload_hf: Annotated[
        bool,
        typer.Option("--upload-hf", help="Afterwards, upload every run this pipeline made to HF_REPO."),
    ] = False,
    upload_models: Models = False,
) -> None:
    """Run a pipeline of stage specs (LAQ -> foundation -> finetune, baselines, evaluations) in order: a step
    reuses a completed run of the same spec, a later step uses an earlier step's run (${steps.NAME}); writes
    data/{name}_{timestamp}/ with the run of each step and the study (study.html, study.md)."""
    from hlrp_lab.spec.pipeline import load_pipeline
    from hlrp_lab.spec.spec_util import parse_sets

    with cli_errors():
        values = parse_sets(sets or [])
        checked = load_pipeline(
            spec_file, name, mode, values, force or [], seeds
        )  # no torch: a second at most
        if upload_hf:
            from hlrp_lab.lib.hub import hub_target

            hub_target()  # fail now, not after training, if the results could not be uploaded
        from hlrp_lab.experiment.pipeline import run_pipeline

        result = run_pipeline(checked, name, mode, force or [], spec_file, values)
    typer.echo(result.markdown, nl=False)
    typer.echo(f"pipeline directory: {result.run_dir}")
    if upload_hf:
        from hlrp_lab.experiment.report.study import NEW

        with cli_errors():
            for run_dir in dict.fromkeys(step.run_dir for step in result.steps if step.used == NEW):
                upload(run_dir, upload_models)
