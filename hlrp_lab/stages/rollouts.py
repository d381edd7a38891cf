"""Closed-loop evaluation of a finetuned policy in the world its data comes from: Meta-World (with the camera
and frame size of the data) or the built-in push world of the procedural data."""

from collections.abc import Callable

import numpy as np
from loguru import logger

from hlrp_lab.data.shards import manifest_of
from hlrp_lab.data.sources.procedural import ProceduralSource
from hlrp_lab.env.metaworld_tasks import LEROBOT_CAMERA, resolve_tasks
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.layout import RunLayout
from hlrp_lab.lib.world import World

# (uint8 frames (N, H, W, 3), instructions, agent states (N, 4)) -> actions (N, 4) or action chunks (N, C, 4)
Policy = Callable[[np.ndarray, list[str], np.ndarray], np.ndarray]


SIMULATED = ("metaworld", "procedural")  # the data sources whose world a policy can be evaluated in


def simulated_origin(urls: list[str]) -> dict | None:
    """The manifest of the simulated source (``SIMULATED``) the shards come from, through the labelling that
    wrote them, if any; None for other data, and for shards without a manifest."""
    manifest = manifest_of(urls)
    while manifest is not None and manifest["source"] not in SIMULATED:
        manifest = manifest.get("parent")
    return manifest


def check_action_steps(spec: dict) -> None:
    """A prediction holds ``data.action_chunk`` actions: ``rollout.n_action_steps`` may execute that many."""
    steps, chunk = spec["rollout"]["n_action_steps"], spec["data"]["action_chunk"]
    if steps > chunk:
        raise SpecError(
            f"rollout.n_action_steps: {steps} actions per prediction, but data.action_chunk predicts {chunk}; "
            f"lower rollout.n_action_steps to at most {chunk} or raise data.action_chunk"
        )


class Rollouts:
    """Episodes of the data's tasks (or ``rollout.tasks``), seeded by ``rollout.seed``, videos in graph/."""

    def __init__(self, spec: dict, origin: dict):
        """Rollouts like the Meta-World data of manifest ``origin``."""
        check_action_steps(spec)
        settings, meta = spec["rollout"], spec["meta"]
        self.tasks = settings["tasks"] or resolve_tasks(origin["source_args"]["tasks"])
        self.camera, self.image_size = origin["source_args"]["camera"], origin["image_size"]
        self.episodes, self.settings = spec["train"]["eval_rollouts"], settings
        self.counted = f"{self.episodes} per task"
        self.video_prefix = RunLayout.of(spec).video_prefix(meta["trial"], meta["session"])
        if self.camera != LEROBOT_CAMERA:
            logger.info(
                f"rollout: the data's camera is {self.camera}; LeRobot's Meta-World image is {LEROBOT_CAMERA} "
                "here (docs/METAWORLD.md), so pc_success compares with its results only for data rendered so"
            )

    def run(self, policy: Policy) -> dict[str, float]:
        """Success per task, per difficulty group and overall, and the mean episode length (on every rank of a
        distributed run: a sharded policy needs them all; only rank 0 saves videos)."""
        from hlrp_lab.env.metaworld_eval import evaluate_policy

        return evaluate_policy(
            lambda observation: policy(
                observation.frames, observation.instructions, observation.agent_states
            ),
            self.tasks,
            self.episodes,
            image_size=self.image_size,
            camera=self.camera,
            max_steps=self.settings["max_steps"],
            seed=self.settings["seed"],
            workers=self.settings["workers"],
            action_steps=self.settings["n_action_steps"],
            videos=self.settings["videos"] if World.current().main else 0,  # rank 0 writes the shared files
            video_prefix=self.video_prefix,
        )


class PushRollouts:
    """Seeded episodes of the push world (``rollout.seed``), drawn like the procedural data's, videos in
    graph/; ``train.eval_rollouts`` (in ``eval`` mode ``rollout.episodes``) episodes in all."""

    def __init__(self, spec: dict, origin: dict):
        """Rollouts like the procedural data of manifest ``origin``."""
        check_action_steps(spec)
        settings, meta = spec["rollout"], spec["meta"]
        if settings["tasks"] is not None:
            raise SpecError(
                "rollout.tasks: names Meta-World tasks, and this data comes from the push world, whose "
                "episodes draw their tasks; set it to null"
            )
        generator = ProceduralSource.manifest_extra["generator"]
        if origin.get("generator") != generator:
            raise SpecError(
                f"train.eval_rollouts: the data comes from an older push world (generator "
                f"{origin.get('generator', 1)}, now {generator}), whose scenes the rollouts cannot replay; "
                "generate the data again (a new data.cache_dir or `hlrp-lab data procedural`) or set it to 0"
            )
        self.image_size, self.num_objects = origin["image_size"], origin["source_args"]["num_objects"]
        self.episodes, self.settings = spec["train"]["eval_rollouts"], settings
        self.counted = f"{self.episodes} in all"
        self.video_prefix = RunLayout.of(spec).video_prefix(meta["trial"], meta["session"])

    def run(self, policy: Policy) -> dict[str, float]:
        """Success overall and per task, and the mean episode length (on every rank, as ``Rollouts.run``)."""
        from hlrp_lab.env.push_eval import evaluate_push

        main = World.current().main
        return evaluate_push(
            lambda obs: policy(obs.frames, obs.instructions, np.zeros((len(obs.tasks), 0), np.float32)),
            self.episodes,
            image_size=self.image_size,
            num_objects=self.num_objects,
            max_steps=self.settings["max_steps"],
            seed=self.settings["seed"],
            action_steps=self.settings["n_action_steps"],
            videos=self.settings["videos"] if main else 0,  # rank 0 writes the shared files
            video_prefix=self.video_prefix,
            progress=main,
        )


def rollouts_of_data(spec: dict, urls: list[str]) -> Rollouts | PushRollouts | None:
    """The closed-loop evaluation of ``spec`` if it asks for one (``train.eval_rollouts``; in ``eval`` mode
    ``rollout.episodes``) and its data comes from a simulated world; else None."""
    if not spec["train"]["eval_rollouts"]:
        return None
    origin = simulated_origin(urls)
    if origin is None:
        return None
    return (Rollouts if origin["source"] == "metaworld" else PushRollouts)(spec, origin)


def check_simulated(urls: list[str]) -> None:
    """Fail unless the data comes from a world a policy can be evaluated in."""
    if simulated_origin(urls) is None:
        raise SpecError(
            "train.eval_rollouts: closed-loop evaluation runs in Meta-World or the push world, and these "
            "shards come from neither `hlrp-lab data metaworld` nor the procedural source; set it to 0"
        )
