"""The ``hlrp-lab`` (alias ``slm-style``) command line.

Commands import torch-heavy modules inside their bodies, so ``--help`` and the orchestration commands
start fast and work in the orchestration-only install.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hlrp_lab.cli.data import data_app
from hlrp_lab.cli.errors import cli_errors
from hlrp_lab.cli.evaluate import eval_policy
from hlrp_lab.cli.pipeline import pipeline
from hlrp_lab.cli.plot import plot, plot_list
from hlrp_lab.cli.remote import run_remote
from hlrp_lab.cli.report import report
from hlrp_lab.cli.sync import Models, list_runs, pull, push, upload
from hlrp_lab.lib.errors import SpecError

if TYPE_CHECKING:
    from hlrp_lab.spec.spec_util import Mode

app = typer.Typer(
    help="hlrp-lab: spec-driven experiments for latent action models (LAQ -> VLA -> finetuning).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
spec_app = typer.Typer(help="Show and check specs.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")
app.add_typer(data_app, name="data")

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "-s",
        "--set",
        help="KEY=VALUE: fill ${KEY} in the spec, or override a dotted key (train.max_step=100). Repeatable.",
    ),
]


Ranks = Annotated[
    int | None,
    typer.Option(
        "--nproc-per-node",
        min=1,
        help="Train on this many ranks per node (one per GPU, or CPU workers with gloo), launched by torchrun; "
        "docs/DISTRIBUTED.md.",
        rich_help_panel="Distributed",
    ),
]
Nodes = Annotated[int, typer.Option(min=1, help="Nodes of the job.", rich_help_panel="Distributed")]
NodeRank = Annotated[int, typer.Option(min=0, help="This node's index.", rich_help_panel="Distributed")]
MasterAddr = Annotated[
    str | None, typer.Option(help="Address of node 0 (several nodes).", rich_help_panel="Distributed")
]
MasterPort = Annotated[
    int | None, typer.Option(help="Rendezvous port on node 0 (default 29500).", rich_help_panel="Distributed")
]


@app.command()
def run(
    spec_file: Annotated[Path, typer.Argument(help="JSON spec file, e.g. specs/laq.json")],
    spec_name: Annotated[str, typer.Argument(help="Name of a spec in that file, e.g. laq_debug")],
    mode: Annotated[
        str, typer.Argument(help="dev | train | eval | search | train@RUN_DIR (resume) | eval@RUN_DIR")
    ] = "dev",
    sets: SetOption = None,
    keep: Annotated[
        int, typer.Option(min=-1, help="search: keep the model files of the best N trials only; -1 keeps all")
    ] = 3,
    upload_hf: Annotated[
        bool, typer.Option("--upload-hf", help="Afterwards, upload the results to the Hub repo HF_REPO.")
    ] = False,
    upload_models: Models = False,
    nproc_per_node: Ranks = None,
    nnodes: Nodes = 1,
    node_rank: NodeRank = 0,
    master_addr: MasterAddr = None,
    master_port: MasterPort = None,
    profile: Annotated[
        bool,
        typer.Option(
            "--profile",
            help="Trace a window of steps with torch.profiler and time each phase of a step (meta.profile): "
            "log/profile/, docs/PROFILING.md.",
        ),
    ] = False,
    trackers: Annotated[
        list[str] | None,
        typer.Option(
            "--tracker",
            help="Also log to tensorboard or wandb; repeatable, the list replaces meta.trackers: docs/TRACKERS.md.",
        ),
    ] = None,
) -> None:
    """Run a spec: writes everything under data/{spec_name}_{timestamp}/."""
    from hlrp_lab.lib import stop
    from hlrp_lab.spec.spec_util import parse_mode, parse_sets

    sets = [*(sets or []), *flag_sets(profile, trackers)]
    with cli_errors():
        lab_mode, values = parse_mode(mode), parse_sets(sets)
        if lab_mode.name != "search":  # SIGUSR1 (Slurm's warning before a time limit): write `last`, exit 75
            stop.listen(forward=True, fresh=True)
        if upload_hf:
            from hlrp_lab.lib.hub import hub_target

            hub_target()  # fail now, not after training, if the results could not be uploaded
    if nproc_per_node is not None or nnodes > 1:
        with cli_errors():
            from hlrp_lab.experiment.launch import Launch, launch

            plan = Launch(nproc_per_node or 1, nnodes, node_rank, master_addr, master_port)
            check_launch_spec(spec_file, spec_name, lab_mode, values, plan.ranks)
            lab_args = ["run", str(spec_file), spec_name, mode, *(f"--set={pair}" for pair in sets)]
            lab_args += [f"--keep={keep}"] + ["--upload-hf"] * upload_hf + ["--upload-models"] * upload_models
            launch(plan, spec_name, lab_args)
        return
    with cli_errors():
        from hlrp_lab.experiment.lab import run_lab
        from hlrp_lab.lib.world import World

        run_dir = run_lab(spec_file, spec_name, lab_mode, values, keep)
    if not World.launched().main:  # rank 0 reports and uploads for the job
        return
    typer.echo(f"run directory: {run_dir}")
    if upload_hf:
        with cli_errors():
            upload(run_dir, upload_models)


def flag_sets(profile: bool, trackers: list[str] | None) -> list[str]:
    """``--profile`` and ``--tracker`` as the dotted ``-s`` overrides they stand for."""
    sets = ["meta.profile=true"] if profile else []
    if trackers:
        sets.append(f"meta.trackers={json.dumps(trackers)}")
    return sets


def check_launch_spec(spec_file: Path, spec_name: str, mode: "Mode", values: dict, ranks: int) -> None:
    """Before starting ranks: the mode runs distributed, and the spec (a new run's, or a resumed run's saved
    one) splits over ``ranks``; a resumed run keeps its batch, so the advice is a number of ranks."""
    from hlrp_lab.spec.check import check_spec, load_run_spec
    from hlrp_lab.spec.spec_util import check_launch, resolve_spec

    check_launch(mode.name, ranks)
    if mode.run_dir is None:
        check_spec(resolve_spec(spec_file, spec_name, values), ranks=ranks)
        return
    spec = load_run_spec(mode.run_dir, spec_name, values, ranks=1)
    from hlrp_lab.lib.batch import fitting_ranks

    batch, accum = spec["data"]["batch_size"], spec["train"]["grad_accum"]
    if fitting_ranks(batch, accum, ranks) != ranks:
        raise SpecError(
            f"data.batch_size: the run's global batch {batch} does not split over {ranks} ranks x "
            f"train.grad_accum {accum}, and a resumed run keeps it; launch "
            f"--nproc-per-node {fitting_ranks(batch, accum, ranks)} (or another divisor of {batch // accum})"
        )


@spec_app.command("show")
def spec_show(
    spec_file: Annotated[Path, typer.Argument(help="JSON spec file")],
    spec_name: Annotated[str, typer.Argument(help="Spec name in that file")],
    sets: SetOption = None,
) -> None:
    """Print the resolved spec, with every default filled in."""
    from hlrp_lab.spec.spec_util import parse_sets, resolve_spec

    with cli_errors():
        from hlrp_lab.spec.check import check_spec

        spec = check_spec(resolve_spec(spec_file, spec_name, parse_sets(sets or [])))
    typer.echo(json.dumps(spec, indent=2))


@spec_app.command("check")
def spec_check(
    spec_files: Annotated[
        list[Path] | None, typer.Argument(help="Spec files (default: specs/*.json)")
    ] = None,
    build: Annotated[
        bool,
        typer.Option(
            "--build",
            help="Also build each model on the meta device and check the optimizer (imports torch; "
            "`run` always does this before it starts)",
        ),
    ] = False,
) -> None:
    """Validate every spec in the given files without torch; keys holding an unset ${var} are checked at run
    time."""
    from hlrp_lab.lib.names import check_name
    from hlrp_lab.spec.spec_util import read_spec_file, spec_variables

    with cli_errors():
        from hlrp_lab.spec.check import check_unresolved
        from hlrp_lab.spec.pipeline import check_unresolved_pipeline, default_variables, is_pipeline

        if build:
            from hlrp_lab.experiment.build import dry_build

    files = spec_files or sorted(Path("specs").glob("*.json"))
    if not files:
        typer.echo("error: no spec files given and none under specs/", err=True)
        raise typer.Exit(2)
    failures = 0
    for spec_file in files:
        try:
            specs = read_spec_file(spec_file)
        except SpecError as err:
            typer.echo(f"FAIL {err}")
            failures += 1
            continue
        for name, spec in specs.items():
            try:
                check_name(name, "spec name")
                if is_pipeline(spec):  # a pipeline (specs/pipeline.json): its steps' specs
                    check_unresolved_pipeline(spec)
                else:
                    checked = check_unresolved(spec)
                    if build:
                        dry_build(checked)
            except SpecError as err:
                typer.echo(f"FAIL {spec_file} {name}: {err}")
                failures += 1
                continue
            unset = spec_variables(spec) - set(default_variables(spec))  # a pipeline's defaults fill the rest
            needs = " ".join(f"-s {v}=..." for v in sorted(unset))
            typer.echo(f"ok   {spec_file} {name}" + (f"  (needs {needs})" if needs else ""))
    if failures:
        raise typer.Exit(2)


@spec_app.command("plan")
def spec_plan(
    spec_file: Annotated[Path, typer.Argument(help="JSON spec file")],
    spec_name: Annotated[str, typer.Argument(help="Spec name in that file")],
    sets: SetOption = None,
    gpus: Annotated[int, typer.Option(min=1, help="GPUs per node (ranks per node).")] = 1,
    nodes: Annotated[int, typer.Option(min=1, help="Nodes: ranks = nodes x gpus.")] = 1,
    gpu_memory: Annotated[float, typer.Option(min=0.1, help="Memory of each GPU in GB (2^30 bytes).")] = 80.0,
    instruction_tokens: Annotated[
        int, typer.Option(min=0, help="Tokens of an instruction in the language model's prompt.")
    ] = 32,
    attention: Annotated[
        str, typer.Option(help="sdpa (flash/memory-efficient: no attention scores kept) or eager.")
    ] = "sdpa",
    as_json: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
) -> None:
    """Will it fit? Parameters, trainable share and GPU memory per rank (weights, gradients, optimizer
    states, activations) under the spec's strategy, precision, LoRA and activation checkpointing on
    nodes x gpus GPUs, from a meta-device build (no memory allocated, offline); docs/PLANNING.md."""
    from hlrp_lab.spec.spec_util import parse_sets

    with cli_errors():
        if attention not in ("sdpa", "eager"):
            raise SpecError(f"--attention: {attention!r} is not sdpa or eager")
        from hlrp_lab.experiment.plan import format_plan, plan_json, plan_spec

        plan = plan_spec(
            spec_file,
            spec_name,
            parse_sets(sets or []),
            gpus=gpus,
            nodes=nodes,
            gpu_memory=gpu_memory,
            instruction_tokens=instruction_tokens,
            attention=attention,
        )
    typer.echo(json.dumps(plan_json(plan), indent=2) if as_json else format_plan(plan))


@spec_app.command("keys")
def spec_keys(
    update: Annotated[
        Path | None, typer.Option(help="Rewrite the generated block of this file instead")
    ] = None,
) -> None:
    """Print every spec key (type, default, meaning) as Markdown: the reference of docs/SPECS.md."""
    with cli_errors():
        from hlrp_lab.spec.docs import spec_keys_markdown, update_specs_doc

    if update is None:
        typer.echo(spec_keys_markdown())
    elif update_specs_doc(update):
        typer.echo(f"updated {update}")


app.command("pipeline")(pipeline)
app.command("run-remote")(run_remote)
app.command("push")(push)
app.command("pull")(pull)
app.command("list")(list_runs)
app.command("plot")(plot)
app.command("plot-list")(plot_list)
app.command("report")(report)
app.command("eval-policy")(eval_policy)


@app.command("merge-lora")
def merge_lora(
    run: Annotated[
        str,
        typer.Argument(help="A LoRA run: RUN_DIR (its best), a .safetensors file of it, or latest:<spec>"),
    ],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="The .safetensors to write (default: beside them).")
    ] = None,
) -> None:
    """Fold a LoRA run's adapters into its base: plain weights the spec without model.vla.lora loads."""
    with cli_errors():
        from hlrp_lab.experiment.merge import merge_run_weights

        typer.echo(f"merged weights: {merge_run_weights(run, output)}")
