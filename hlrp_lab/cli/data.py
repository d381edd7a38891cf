"""``hlrp-lab data``: write WebDataset shards from videos, Meta-World, LeRobot datasets or the procedural
scene; inspect them.

A source's options come from its config (``config_options``): the same keys, defaults and help as in a spec's
``data.source`` block.
"""

from pathlib import Path
from typing import Annotated, Any

import typer

from hlrp_lab.cli.errors import cli_errors
from hlrp_lab.cli.options import config_options
from hlrp_lab.data.sources.config import LeRobotConfig, MetaWorldConfig, ProceduralConfig, VideosConfig
from hlrp_lab.stages.config import LabelConfig  # importing hlrp_lab.stages registers the label source

data_app = typer.Typer(help="Write and inspect WebDataset shards.", no_args_is_help=True)

OutDir = Annotated[Path, typer.Argument(help="Directory for the shards and manifest.json")]
Size = Annotated[int, typer.Option("--size", help="Frames are SIZE x SIZE pixels.")]
ShardSize = Annotated[float, typer.Option("--shard-size", help="Close a shard once it holds this many MB.")]
Name = Annotated[
    str | None, typer.Option("--name", help="Shard file prefix: NAME-000000.tar (default: source)")
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty OUT_DIR.")]


@data_app.callback()
def console_log() -> None:
    """Write and inspect WebDataset shards."""
    from hlrp_lab.lib.logger import setup_logger

    setup_logger()  # every line of a data command in the lab's one log format


def write(
    block: dict[str, Any], out_dir: Path, size: int, shard_size: float, name: str | None, overwrite: bool
):
    """Write the shards of a source block and print where they went; returns the source."""
    with cli_errors():
        from hlrp_lab.data.dataset import write_dataset

        manifest, source = write_dataset(
            block,
            out_dir,
            image_size=size,
            name=name or block["name"],
            shard_size_mb=shard_size,
            overwrite=overwrite,
        )
    typer.echo(
        f"wrote {manifest['num_episodes']} episodes, {manifest['num_frames']} frames in "
        f"{len(manifest['shards'])} shards to {out_dir}"
    )
    return source


@data_app.command("procedural")
@config_options(ProceduralConfig, flags={"num_objects": "objects"})
def procedural(
    out_dir: OutDir,
    source_args: dict[str, Any],
    size: Size = 64,
    shard_size: ShardSize = 256.0,
    name: Name = None,
    overwrite: Overwrite = False,
) -> None:
    """The built-in scene: an agent pushing coloured blocks, with true actions and instructions."""
    write({"name": "procedural", **source_args}, out_dir, size, shard_size, name, overwrite)


@data_app.command("videos")
@config_options(VideosConfig, skip=("root",))
def videos(
    src_dir: Annotated[Path, typer.Argument(help="Folder searched recursively for mp4, webm, mkv, avi")],
    out_dir: OutDir,
    source_args: dict[str, Any],
    size: Size = 128,
    shard_size: ShardSize = 256.0,
    name: Name = None,
    overwrite: Overwrite = False,
) -> None:
    """Videos: decoded with PyAV, resampled, resized and center-cropped; unreadable files are skipped."""
    block = {"name": "videos", "root": str(src_dir), **source_args}
    source = write(block, out_dir, size, shard_size, name, overwrite)
    if source.skipped:
        typer.echo(f"skipped {len(source.skipped)} unreadable videos: {', '.join(source.skipped)}", err=True)


@data_app.command("metaworld")
@config_options(MetaWorldConfig)
def metaworld(
    out_dir: OutDir,
    source_args: dict[str, Any],
    size: Size = 64,
    shard_size: ShardSize = 256.0,
    name: Name = None,
    overwrite: Overwrite = False,
) -> None:
    """Meta-World expert demonstrations: frames, 4-D actions, proprio states, success, instructions."""
    write({"name": "metaworld", **source_args}, out_dir, size, shard_size, name, overwrite)


@data_app.command("lerobot")
@config_options(LeRobotConfig, skip=("path",))
def lerobot(
    dataset: Annotated[
        str,
        typer.Argument(
            metavar="PATH_OR_REPO_ID",
            help="A LeRobotDataset folder (holding meta/info.json) or a Hub repo id",
        ),
    ],
    out_dir: OutDir,
    source_args: dict[str, Any],
    size: Size = 128,
    shard_size: ShardSize = 256.0,
    name: Name = None,
    overwrite: Overwrite = False,
) -> None:
    """LeRobot datasets (format v3.x or v2.x, local or from the Hub): one camera's frames, actions, states and
    the task as the instruction."""
    write({"name": "lerobot", "path": dataset, **source_args}, out_dir, size, shard_size, name, overwrite)


@data_app.command("label")
@config_options(LabelConfig, skip=("laq", "shards"))
def label(
    laq_run: Annotated[
        str, typer.Argument(help="LAQ run: a run directory, a .safetensors file, latest:<spec>")
    ],
    shards: Annotated[str, typer.Argument(help="Shards to label: a directory, glob or brace pattern")],
    out_dir: OutDir,
    source_args: dict[str, Any],
    shard_size: ShardSize = 256.0,
    name: Name = None,
    overwrite: Overwrite = False,
) -> None:
    """Latent-action labels: every episode of SHARDS with the codes the LAQ run gives its pairs (t, t+k)."""
    with cli_errors():
        from hlrp_lab.lib.runs import resolve_reference

        reference = resolve_reference(laq_run, "LAQ_RUN")
        image_size = reference.spec()["data"]["image_size"]
    typer.echo(f"labelling with {reference.weights}")
    block = {
        "name": "label",
        "laq": str(reference.weights),  # resolved once: a newer run cannot slip in between
        "shards": shards,
        **source_args,
    }
    write(block, out_dir, image_size, shard_size, name, overwrite)


@data_app.command("info")
def info(directory: Annotated[Path, typer.Argument(help="A shard directory with manifest.json")]) -> None:
    """Print the manifest summary, name the files it does not list, and verify every shard's size and sha256
    (exit 1 on a mismatch)."""
    with cli_errors():
        from hlrp_lab.data.shards import MANIFEST, read_manifest, unlisted_files, verify_shards

        manifest = read_manifest(directory)
        typer.echo(summary(manifest))
        if unlisted := unlisted_files(directory, manifest):
            typer.echo(f"{len(unlisted)} files not in {MANIFEST}: {', '.join(unlisted)}")
        bad = verify_shards(directory)
    if bad:
        typer.echo(f"error: {len(bad)} shards do not match the manifest: {', '.join(bad)}", err=True)
        raise typer.Exit(1)
    typer.echo(f"checksums: all {len(manifest['shards'])} shards verified")


def summary(manifest: dict) -> str:
    args = ", ".join(f"{k}={v}" for k, v in manifest["source_args"].items())
    total_mb = sum(s["bytes"] for s in manifest["shards"]) / 1e6
    lines = [
        f"source:   {manifest['source']} ({args})",
        (
            f"samples:  {manifest['num_samples']} (one per {manifest['sample_unit']}), "
            f"{manifest['num_frames']} frames of {manifest['image_size']}x{manifest['image_size']}"
        ),
        f"shards:   {len(manifest['shards'])} x {manifest['name']}-NNNNNN.tar, {total_mb:.1f} MB",
        "keys:     " + "; ".join(f"{k}: {v}" for k, v in manifest["keys"].items()),
    ]
    return "\n".join(lines)
