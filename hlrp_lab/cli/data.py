"""``hlrp-lab data``: write WebDataset shards from videos, Meta-World or the procedural scene; inspect them."""

from pathlib import Path
from typing import Annotated, Any

import typer

from hlrp_lab.cli.errors import cli_errors

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
def procedural(
    out_dir: OutDir,
    episodes: Annotated[int, typer.Option(help="Number of episodes.")] = 256,
    episode_length: Annotated[int, typer.Option(help="Frames per episode.")] = 32,
    objects: Annotated[int, typer.Option(help="Coloured blocks per scene.")] = 3,
    seed: Annotated[int, typer.Option(help="Dataset seed.")] = 0,
    size: Size = 64,
    shard_size: ShardSize = 256.0,
    name: Name = None,
    overwrite: Overwrite = False,
) -> None:
    """The built-in scene: an agent pushing coloured blocks, with true actions and instructions."""
    block = {
        "name": "procedural",
        "episodes": episodes,
        "episode_length": episode_length,
        "num_objects": objects,
        "seed": seed,
    }
    write(block, out_dir, size, shard_size, name, overwrite)


@data_app.command("videos")
def videos(
    src_dir: Annotated[Path, typer.Argument(help="Folder searched recursively for mp4, webm, mkv, avi")],
    out_dir: OutDir,
    fps: Annotated[float, typer.Option(help="Resample every video to this frame rate.")] = 10.0,
    clip_seconds: Annotated[
        float | None, typer.Option(help="Cut each video into clips of this many seconds (one scene each).")
    ] = None,
    instruction_file: Annotated[
        Path | None, typer.Option(help="CSV with columns file,instruction giving each video's instruction.")
    ] = None,
    size: Size = 128,
    shard_size: ShardSize = 256.0,
    name: Name = None,
    overwrite: Overwrite = False,
) -> None:
    """Videos: decoded with PyAV, resampled, resized and center-cropped; unreadable files are skipped."""
    block = {
        "name": "videos",
        "root": str(src_dir),
        "fps": fps,
        "clip_seconds": clip_seconds,
        "instruction_file": str(instruction_file) if instruction_file else None,
    }
    source = write(block, out_dir, size, shard_size, name, overwrite)
    if source.skipped:
        typer.echo(f"skipped {len(source.skipped)} unreadable videos: {', '.join(source.skipped)}", err=True)


@data_app.command("metaworld")
def metaworld(
    out_dir: OutDir,
    tasks: Annotated[
        str,
        typer.Option(
            help="Comma-separated tasks (reach-v3,push-v3) or a set: easy|medium|hard|very_hard|mt10|mt50."
        ),
    ] = "easy",
    episodes: Annotated[int, typer.Option(help="Episodes per task.")] = 10,
    max_steps: Annotated[int, typer.Option(help="Steps per episode at most.")] = 150,
    after_success: Annotated[
        int, typer.Option(min=-1, help="Steps recorded after the first success; -1 runs to --max-steps.")
    ] = 10,
    camera: Annotated[str, typer.Option(help="Meta-World camera name.")] = "corner2",
    seed: Annotated[int, typer.Option(help="Dataset seed; episodes keep their own seeds.")] = 0,
    workers: Annotated[int, typer.Option(help="Rendering processes.")] = 2,
    size: Size = 64,
    shard_size: ShardSize = 256.0,
    name: Name = None,
    overwrite: Overwrite = False,
) -> None:
    """Meta-World expert demonstrations: frames, 4-D actions, proprio states, success, instructions."""
    block = {
        "name": "metaworld",
        "tasks": tasks,
        "episodes": episodes,
        "max_steps": max_steps,
        "after_success": None if after_success < 0 else after_success,
        "camera": camera,
        "seed": seed,
        "workers": workers,
    }
    write(block, out_dir, size, shard_size, name, overwrite)


@data_app.command("label")
def label(
    laq_run: Annotated[
        str, typer.Argument(help="LAQ run: a run directory, a .safetensors file, latest:<spec>")
    ],
    shards: Annotated[str, typer.Argument(help="Shards to label: a directory, glob or brace pattern")],
    out_dir: OutDir,
    offset: Annotated[
        int | None, typer.Option(help="k of the labelled pairs (t, t+k); default: the LAQ run's first offset")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Pairs per LAQ forward pass.")] = 256,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
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
        "offset": offset,
        "batch_size": batch_size,
        "device": device,
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
