"""``hlrp-lab run-remote``: a run on a cloud machine through dstack (its results come back through the Hub), on
several GPU nodes through dstack (``--nodes``), a whole pipeline with its runs on a dstack volume
(``--pipeline``), or on a Slurm cluster (``--slurm``, hlrp_lab/cli/slurm.py).

The spec is checked here first, in this process and without torch: every framework key, component and search
entry, and the batch split over the job's ranks, so that this command stays light and gives the errors
``run`` would give.
"""

import itertools
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Annotated

import pydash
import typer

from hlrp_lab.cli.errors import cli_errors
from hlrp_lab.cli.slurm import DEFAULT_LAUNCHER, DEFAULT_SIGNAL_LEAD_S, SlurmJob
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.scrub import MASK, is_secret_name

DSTACK_DIR = Path(".dstack")
RUN_NAME = re.compile(r"[a-z][a-z0-9-]{1,40}")
REMOTE_MODES = ("dev", "train", "search")
NOT_SET = "(not set)"
RUN_REFERENCE_KEYS = ("train.init_from", "data.source.laq")  # runs a later stage starts from
MULTINODE_CONFIG = "run-gpu-multinode.yml"
NODES, SLURM, PIPELINE = "Nodes", "Slurm (--slurm)", "Pipeline (--pipeline)"  # help panels
DEFAULT_VOLUME = "hlrp-data"
REMOTE_DATA = "/workflow/data"  # where a pipeline's volume is mounted: the data/ of the remote checkout
RUN_COMMAND, PIPELINE_COMMAND = "hlrp-lab run ", "hlrp-lab pipeline "


def run_remote(
    spec_file: Annotated[
        Path, typer.Argument(help="JSON spec file inside this checkout, e.g. specs/laq.json")
    ],
    spec_name: Annotated[str, typer.Argument(help="Name of a spec in that file")],
    mode: Annotated[str, typer.Argument(help="dev | train | search")] = "train",
    gpu: Annotated[bool, typer.Option("--gpu", help="Run on a GPU machine (.dstack/run-gpu-*.yml).")] = False,
    name: Annotated[
        str | None,
        typer.Option(
            "-n", "--name", help="dstack run name, or Slurm job name (default: spec name and time)."
        ),
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
    nodes: Annotated[
        int, typer.Option(min=1, help="Nodes of the job (dstack: with --gpu).", rich_help_panel=NODES)
    ] = 1,
    gpus_per_node: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="GPUs per node, one rank each (dstack default: the config's; Slurm default 1, 0: a CPU job).",
            rich_help_panel=NODES,
        ),
    ] = None,
    slurm: Annotated[
        bool, typer.Option("--slurm", help="Submit to Slurm with sbatch instead.", rich_help_panel=SLURM)
    ] = False,
    nproc_per_node: Annotated[
        int | None,
        typer.Option(min=1, help="Ranks per node (default: --gpus-per-node).", rich_help_panel=SLURM),
    ] = None,
    cpus_per_task: Annotated[
        int | None,
        typer.Option(
            min=1, help="CPUs per node for all its ranks (default: one per rank).", rich_help_panel=SLURM
        ),
    ] = None,
    partition: Annotated[str | None, typer.Option(help="Slurm partition.", rich_help_panel=SLURM)] = None,
    account: Annotated[str | None, typer.Option(help="Slurm account.", rich_help_panel=SLURM)] = None,
    time: Annotated[
        str | None, typer.Option(help="Time limit, HH:MM:SS or D-HH:MM:SS.", rich_help_panel=SLURM)
    ] = None,
    requeue: Annotated[
        bool,
        typer.Option(
            "--requeue",
            help="Requeue the job when SIGUSR1 (before the time limit) stopped it, and on preemption; it resumes "
            "from last.",
            rich_help_panel=SLURM,
        ),
    ] = False,
    signal_lead: Annotated[
        int,
        typer.Option(
            min=1,
            help="Seconds before the time limit that SIGUSR1 asks for a checkpoint.",
            rich_help_panel=SLURM,
        ),
    ] = DEFAULT_SIGNAL_LEAD_S,
    sbatch_args: Annotated[
        list[str] | None,
        typer.Option(
            "--sbatch-arg",
            help="One more #SBATCH option, e.g. --sbatch-arg=--qos=high. Repeatable.",
            rich_help_panel=SLURM,
        ),
    ] = None,
    launcher: Annotated[
        str | None,
        typer.Option(
            help=f"The command that runs hlrp-lab on the nodes (default: {DEFAULT_LAUNCHER}).",
            rich_help_panel=SLURM,
        ),
    ] = None,
    upload_hf: Annotated[
        bool,
        typer.Option(
            "--upload-hf", help="Upload the results to the Hub too (HF_REPO).", rich_help_panel=SLURM
        ),
    ] = False,
    pipeline: Annotated[
        bool,
        typer.Option(
            "--pipeline",
            help="SPEC_FILE and SPEC_NAME name a pipeline (specs/pipeline.json): run `hlrp-lab pipeline` (MODE "
            "train or dev) with data/ on a dstack volume.",
            rich_help_panel=PIPELINE,
        ),
    ] = False,
    volume: Annotated[
        str | None,
        typer.Option(
            help=f"--pipeline: the dstack volume mounted at {REMOTE_DATA}, where the runs stay and are reused "
            f"(default: {DEFAULT_VOLUME}).",
            rich_help_panel=PIPELINE,
        ),
    ] = None,
) -> None:
    """Launch `hlrp-lab run SPEC_FILE SPEC_NAME MODE --upload-hf` on a cloud machine with dstack (several GPU
    nodes with --nodes; `hlrp-lab pipeline` with --pipeline), or submit it to a Slurm cluster with --slurm."""
    sets = sets or []
    if pipeline or volume is not None:
        with cli_errors():
            check_pipeline_options(pipeline, volume, slurm, nodes, gpus_per_node)
    if slurm:
        with cli_errors():
            check_mode(mode)
            if gpu:
                raise SpecError("--gpu: a dstack option; with --slurm give --gpus-per-node N (default 1)")
            job = SlurmJob(
                spec_file=slurm_spec_path(spec_file),
                spec_name=spec_name,
                mode=mode,
                name=name or default_run_name(spec_name),
                checkout=Path.cwd().resolve(),
                sets=tuple(sets),
                nodes=nodes,
                gpus_per_node=1 if gpus_per_node is None else gpus_per_node,
                nproc_per_node=nproc_per_node,
                cpus_per_task=cpus_per_task,
                partition=partition,
                account=account,
                time=time,
                requeue=requeue,
                signal_lead_s=signal_lead,
                sbatch_args=tuple(sbatch_args or []),
                launcher=launcher or DEFAULT_LAUNCHER,
                upload_hf=upload_hf,
            )
        submit_slurm(job, dry_run)
        return
    with cli_errors():
        refuse_slurm_options(
            {
                "--nproc-per-node": nproc_per_node,
                "--cpus-per-task": cpus_per_task,
                "--partition": partition,
                "--account": account,
                "--time": time,
                "--requeue": requeue or None,
                "--signal-lead": None if signal_lead == DEFAULT_SIGNAL_LEAD_S else signal_lead,
                "--sbatch-arg": sbatch_args,
                "--launcher": launcher,
                "--upload-hf": upload_hf or None,
            }
        )
        if pipeline:
            from hlrp_lab.spec.pipeline import check_pipeline_mode

            check_pipeline_mode(mode)
            plan = DstackPlan(dstack_config(gpu, "train"), volume=volume or DEFAULT_VOLUME)
        else:
            plan = dstack_plan(gpu, mode, nodes, gpus_per_node)
    launch_dstack(plan, spec_file, spec_name, mode, name, sets, dry_run)


def check_pipeline_options(
    pipeline: bool, volume: str | None, slurm: bool, nodes: int, gpus_per_node: int | None
) -> None:
    """--pipeline is one dstack task on one machine; --volume goes with it."""
    if not pipeline:
        raise SpecError(f"--volume {volume}: the volume of a pipeline's runs; add --pipeline")
    if slurm:
        raise SpecError(
            "--pipeline: launched through dstack, its runs on a dstack volume; on Slurm, run `hlrp-lab pipeline` "
            "in your own sbatch script"
        )
    if nodes > 1 or gpus_per_node is not None:
        raise SpecError(
            "--pipeline: its steps run one after another on one machine; drop --nodes and --gpus-per-node"
        )


def check_mode(mode: str) -> None:
    if mode not in REMOTE_MODES:
        raise SpecError(f"mode {mode!r}: run-remote takes one of {', '.join(REMOTE_MODES)}")


def refuse_slurm_options(options: dict[str, object]) -> None:
    """A dstack run: none of the Slurm options (flag -> value, None when not given)."""
    given = next((flag for flag, value in options.items() if value is not None), None)
    if given is not None:
        raise SpecError(f"{given}: a Slurm option; add --slurm (dstack runs use .dstack/ configs)")


@dataclass(frozen=True)
class DstackPlan:
    """The config a dstack run applies, and for a multi-node run the nodes and GPUs per node to write into a
    copy of it; for a pipeline, the volume its copy mounts."""

    config: Path
    nodes: int = 1
    gpus_per_node: int | None = None
    volume: str | None = None

    @property
    def pipeline(self) -> bool:
        return self.volume is not None

    @property
    def multinode(self) -> bool:
        return self.config.name == MULTINODE_CONFIG

    @property
    def ranks(self) -> int:
        return self.nodes * (self.gpus_per_node or 1)


def dstack_plan(gpu: bool, mode: str, nodes: int, gpus_per_node: int | None) -> DstackPlan:
    """Which config: one machine (CPU or GPU, train or search), or several GPUs/nodes with --nodes or
    --gpus-per-node (the multi-node config, whose GPU count is the default)."""
    check_mode(mode)
    if nodes == 1 and gpus_per_node is None:
        return DstackPlan(dstack_config(gpu, mode))
    flag = f"--nodes {nodes}" if nodes > 1 else f"--gpus-per-node {gpus_per_node}"
    if not gpu:
        raise SpecError(f"{flag}: several nodes or GPUs run on GPU machines; add --gpu (or --slurm)")
    if gpus_per_node == 0:
        raise SpecError(
            "--gpus-per-node 0: a dstack multi-node run is on GPUs; give 1 or more, or use --slurm"
        )
    config = DSTACK_DIR / MULTINODE_CONFIG
    if not config.is_file():
        raise SpecError(f"{config} not found; run run-remote from the root of the hlrp-lab checkout")
    plan = DstackPlan(config, nodes, gpus_per_node or config_gpus(config))
    if mode == "search" and plan.ranks > 1:
        raise SpecError(
            f"{flag}: a search runs in one process (Ray Tune spreads its trials), not on {plan.ranks} ranks; "
            "run it without --nodes and --gpus-per-node"
        )
    return plan


def launch_dstack(
    plan: DstackPlan,
    spec_file: Path,
    spec_name: str,
    mode: str,
    name: str | None,
    sets: list[str],
    dry_run: bool,
) -> None:
    """Check the spec for the plan's ranks, then ``dstack apply`` (or show it with ``dry_run``)."""
    with cli_errors():
        from hlrp_lab.lib.hub import hub_target

        relative = project_path(spec_file)
        run_name = name or default_run_name(spec_name)
        if not RUN_NAME.fullmatch(run_name):
            raise SpecError(
                f"-n {run_name!r}: dstack run names are 2-41 of a-z, 0-9 and -, starting with a letter"
            )
        if dry_run:
            check_plan_locally(plan, relative, spec_name, mode, sets)
            show_launch(apply_args(plan.config, run_name), launch_env(relative, spec_name, mode, sets), sets)
            if plan.multinode:
                typer.echo(f"config: a copy of {plan.config} with {multinode_changes(plan)}")
            if plan.pipeline:
                typer.echo(f"config: a copy of {plan.config} with {pipeline_changes(plan)}")
            return
        target = hub_target()
        dstack = shutil.which("dstack")
        if dstack is None:
            raise SpecError(
                "dstack is not installed; install it with `uv tool install dstack` and run `dstack init`"
            )
        check_plan_locally(plan, relative, spec_name, mode, sets)  # last: the slowest check
    env = {**launch_env(relative, spec_name, mode, sets), "HF_TOKEN": target.token, "HF_REPO": target.repo}
    with tempfile.TemporaryDirectory(prefix="hlrp-dstack-") as folder:
        command = [dstack, *apply_args(plan_config(plan, Path(folder)), run_name)]
        typer.echo(f"launching {run_name}: {shlex.join(command)}")
        completed = subprocess.run(command, env={**os.environ, **env}, check=False)
    if completed.returncode != 0:
        typer.echo(f"error: dstack apply exited with code {completed.returncode}", err=True)
        raise typer.Exit(completed.returncode)
    pulled = "`hlrp-lab pull SPEC` for each of its specs" if plan.pipeline else f"`hlrp-lab pull {spec_name}`"
    typer.echo(f"follow it with `dstack logs {run_name}`; results go to {target.repo}: {pulled}")


def plan_config(plan: DstackPlan, folder: Path) -> Path:
    """The config to apply: the plan's own, or a copy of it written into ``folder`` (several nodes, a
    pipeline)."""
    if plan.multinode:
        return write_multinode_config(plan, folder)
    if plan.pipeline:
        return write_pipeline_config(plan, folder)
    return plan.config


def check_plan_locally(plan: DstackPlan, spec_file: Path, spec_name: str, mode: str, sets: list[str]) -> None:
    """A pipeline's checks, or a spec's (for the plan's ranks)."""
    if plan.pipeline:
        check_pipeline_locally(spec_file, spec_name, sets)
    else:
        check_spec_locally(spec_file, spec_name, mode, sets, plan.ranks if plan.multinode else None)


def check_pipeline_locally(spec_file: Path, name: str, sets: list[str]) -> None:
    """What `hlrp-lab pipeline` checks before its first step (every step's spec, no torch), and that each step's
    spec file lies inside this checkout (dstack uploads it). Runs under data/ are fine: data/ is the volume."""
    from hlrp_lab.spec.pipeline import check_steps, read_pipeline
    from hlrp_lab.spec.spec_util import parse_sets

    pipeline = read_pipeline(spec_file, name, parse_sets(sets))
    for step_name, step in pipeline.steps.items():
        if step.spec_file is not None:
            try:
                project_path(Path(step.spec_file))
            except SpecError as err:
                raise SpecError(f"steps.{step_name}.spec_file: {err}") from None
    check_steps(pipeline)


def pipeline_changes(plan: DstackPlan) -> str:
    """What ``write_pipeline_config`` changes, for --dry-run."""
    files = f"{Path.cwd().resolve()}:/workflow"
    return f"volumes: {plan.volume}:{REMOTE_DATA}, {PIPELINE_COMMAND.strip()} instead of run, files: {files}"


def write_pipeline_config(plan: DstackPlan, folder: Path) -> Path:
    """A copy of the plan's config in ``folder`` whose last command runs ``hlrp-lab pipeline`` instead of
    ``hlrp-lab run``, with the volume mounted at the checkout's data/ (the runs stay there, and a relaunch reuses
    them) and this checkout uploaded by its absolute path."""
    import yaml

    config = yaml.safe_load(plan.config.read_text())
    command = config["commands"][-1]
    if RUN_COMMAND not in command:
        raise SpecError(
            f"{plan.config}: its last command does not run `{RUN_COMMAND.strip()}`; restore the file"
        )
    config["commands"][-1] = command.replace(RUN_COMMAND, PIPELINE_COMMAND, 1)
    config["volumes"] = [{"name": plan.volume, "path": REMOTE_DATA}]
    config["files"] = [f"{Path.cwd().resolve()}:/workflow"]
    path = folder / plan.config.name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def config_gpus(config: Path) -> int:
    """The GPUs per node of the multi-node config (``resources.gpu.count``)."""
    import yaml

    count = pydash.get(yaml.safe_load(config.read_text()), "resources.gpu.count")
    if not isinstance(count, int) or count < 1:
        raise SpecError(f"{config}: resources.gpu.count must be a number of GPUs per node; restore the file")
    return count


def multinode_changes(plan: DstackPlan) -> str:
    """What ``write_multinode_config`` changes, for --dry-run."""
    files = f"{Path.cwd().resolve()}:/workflow"
    return f"nodes: {plan.nodes}, resources.gpu.count: {plan.gpus_per_node}, files: {files}"


def write_multinode_config(plan: DstackPlan, folder: Path) -> Path:
    """A copy of the multi-node config in ``folder`` with the plan's nodes and GPUs per node, uploading this
    checkout by its absolute path (a relative one is relative to the config's folder)."""
    import yaml

    config = yaml.safe_load(plan.config.read_text())
    config["nodes"] = plan.nodes
    config["resources"]["gpu"]["count"] = plan.gpus_per_node
    config["files"] = [f"{Path.cwd().resolve()}:/workflow"]
    path = folder / plan.config.name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def slurm_spec_path(spec_file: Path) -> str:
    """``spec_file`` as the job names it: relative to this checkout (where the job runs), else absolute (a
    shared filesystem)."""
    if not spec_file.is_file():
        raise SpecError(f"spec file not found: {spec_file}")
    try:
        return spec_file.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(spec_file.resolve())


def submit_slurm(job: SlurmJob, dry_run: bool) -> None:
    """Check the spec for the job's ranks, then write the job folder and ``sbatch`` it (``dry_run``: print the
    script and the command, write nothing)."""
    from hlrp_lab.cli.slurm import parse_job_id, sbatch_command, sbatch_script, write_job

    with cli_errors():
        sbatch = shutil.which("sbatch")
        if sbatch is None and not dry_run:
            raise SpecError(
                "sbatch not found: --slurm submits from a machine with Slurm's commands (a login node); "
                "see the script with --dry-run"
            )
        if job.upload_hf and not dry_run:
            from hlrp_lab.lib.hub import hub_target

            hub_target()  # HF_REPO and HF_TOKEN reach the job through sbatch's environment
        check_spec_locally(
            Path(job.spec_file), job.spec_name, job.mode, list(job.sets), job.ranks, references=False
        )
        if dry_run:
            shown = replace(job, sets=tuple(masked_sets(list(job.sets))[1::2]))  # secrets masked
            typer.echo(sbatch_script(shown), nl=False)
            typer.echo(f"# would run: {shlex.join(sbatch_command(job))}")
            return
        write_job(job)
    completed = subprocess.run(sbatch_command(job, sbatch), capture_output=True, text=True, check=False)
    job_id = parse_job_id(completed.stdout)
    if completed.returncode != 0 or not job_id.isdigit():
        shutil.rmtree(job.job_dir)  # nothing was submitted: the name is free again
        detail = (completed.stderr.strip().splitlines() or ["no job id printed"])[-1]
        typer.echo(f"error: sbatch exited with code {completed.returncode}: {detail}", err=True)
        raise typer.Exit(completed.returncode or 1)
    folder = job.job_dir.relative_to(job.checkout)
    typer.echo(f"submitted job {job_id}: {folder / job.script_path.name}")
    typer.echo(
        f"follow it with `squeue -j {job_id}` and `tail -f {job.output(job_id).relative_to(job.checkout)}`; "
        f"the run directory will be named in {job.run_dir_file.relative_to(job.checkout)}"
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


def check_spec_locally(
    spec_file: Path,
    spec_name: str,
    mode: str,
    sets: list[str],
    ranks: int | None = None,
    references: bool = True,
) -> None:
    """The checks of ``run`` before launch that need no torch: every key, component and search entry, and on
    ``ranks`` the mode and the batch split; ``references``: refuse runs under this machine's data/."""
    from hlrp_lab.spec.check import check_spec
    from hlrp_lab.spec.search_space import check_search_mode
    from hlrp_lab.spec.spec_util import check_launch, parse_sets, resolve_spec

    if ranks is not None:
        check_launch(mode, ranks)
    spec = check_spec(resolve_spec(spec_file, spec_name, parse_sets(sets)), ranks=ranks)
    if references:
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
