"""``hlrp-lab eval-policy``: the bounds of Meta-World success, the scripted expert's and a random policy's,
through the closed-loop evaluator that scores finetuned policies (no torch)."""

from enum import Enum
from pathlib import Path
from typing import Annotated, get_args

import typer

from hlrp_lab.cli.errors import cli_errors


class Bound(str, Enum):
    expert = "expert"
    random = "random"


def pc_success_table(metrics: dict[str, float], tasks: list[str], anchors: dict[str, float]) -> str:
    """Per-task, per-group and overall ``pc_success`` as aligned lines, the published anchors below them."""
    groups = [key.removeprefix("pc_success/") for key in metrics if key.startswith("pc_success/")]
    rows = [
        *((task, metrics[f"pc_success/{task}"]) for task in tasks),
        *((f"[{group}]", metrics[f"pc_success/{group}"]) for group in groups if group not in tasks),
        ("overall (episodes)", metrics["pc_success"]),
        ("mean of the groups", metrics["pc_success_group_mean"]),
        *((f"anchor: {name}", value) for name, value in anchors.items()),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value:6.1f}" for name, value in rows)


def eval_policy(
    policy: Annotated[
        Bound,
        typer.Argument(
            help="expert: Meta-World's scripted experts (the upper bound); random: uniform actions."
        ),
    ],
    tasks: Annotated[
        str,
        typer.Option(
            help="Comma-separated Meta-World v3 tasks, or one of easy, medium, hard, very_hard, mt10, mt50."
        ),
    ],
    episodes: Annotated[int, typer.Option(min=1, help="Episodes per task (LeRobot's protocol: 10).")] = 10,
    seed: Annotated[
        int,
        typer.Option(min=0, help="Evaluation seed (rollout.seed's default); seeds the random policy too."),
    ] = 1000,
    size: Annotated[int, typer.Option(min=8, help="Frame size rendered for the policy (pixels).")] = 64,
    camera: Annotated[
        str, typer.Option(help="Meta-World camera; corner4 is the image LeRobot's environment calls corner2.")
    ] = "corner4",
    max_steps: Annotated[
        int, typer.Option(min=1, max=500, help="Steps per episode at most (LeRobot's protocol: 500).")
    ] = 500,
    workers: Annotated[int, typer.Option(min=1, help="Simulator processes.")] = 2,
    out: Annotated[
        Path | None, typer.Option(help="Also write the settings and metrics to this JSON file.")
    ] = None,
) -> None:
    """Success of the scripted expert or a random policy in Meta-World, LeRobot's protocol (docs/METAWORLD.md):
    pc_success per task, per difficulty group and overall, beside the published anchors."""
    with cli_errors():
        from hlrp_lab.env.metaworld_eval import evaluate_policy, expert_policy, random_policy
        from hlrp_lab.env.metaworld_tasks import ANCHORS, Camera, resolve_tasks
        from hlrp_lab.lib.errors import SpecError
        from hlrp_lab.lib.util import write_json

        try:
            names = resolve_tasks(tasks)
        except ValueError as err:
            raise SpecError(f"--tasks: {err}") from None
        if camera not in get_args(Camera):
            raise SpecError(f"--camera: unknown camera {camera!r}; one of {', '.join(get_args(Camera))}")
        act = expert_policy() if policy is Bound.expert else random_policy(seed)
        settings = {"image_size": size, "camera": camera, "max_steps": max_steps, "seed": seed}
        metrics = evaluate_policy(act, names, episodes, **settings, workers=workers)
        typer.echo(f"pc_success of the {policy.value} policy, {episodes} episodes per task, {settings}")
        typer.echo(pc_success_table(metrics, names, ANCHORS))
        if out is not None:
            result = {"policy": policy.value, "tasks": names, "episodes": episodes, **settings}
            write_json(out, {**result, "metrics": metrics, "anchors": ANCHORS})
            typer.echo(f"wrote {out}")
