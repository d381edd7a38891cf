"""Closed-loop evaluation of a finetuned policy in Meta-World, with the camera and frame size of its data."""

from collections.abc import Callable

import numpy as np
from loguru import logger

from hlrp_lab.data.shards import manifest_of
from hlrp_lab.env.metaworld_tasks import LEROBOT_CAMERA, resolve_tasks
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.layout import RunLayout
from hlrp_lab.lib.world import World

# (uint8 frames (N, H, W, 3), instructions, agent states (N, 4)) -> actions (N, 4) or action chunks (N, C, 4)
Policy = Callable[[np.ndarray, list[str], np.ndarray], np.ndarray]


def metaworld_origin(urls: list[str]) -> dict | None:
    """The Meta-World manifest the shards come from (through the labelling that wrote them, if any); None for
    other data, and for shards without a manifest."""
    manifest = manifest_of(urls)
    while manifest is not None and manifest["source"] != "metaworld":
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
        self.video_prefix = RunLayout.of(spec).video_prefix(meta["trial"], meta["session"])
        if self.camera != LEROBOT_CAMERA:
            logger.info(
                f"rollout: the data's camera is {self.camera}; LeRobot's Meta-World image is {LEROBOT_CAMERA} "
                "here (docs/METAWORLD.md), so pc_success compares with its results only for data rendered so"
            )

    @classmethod
    def of_data(cls, spec: dict, urls: list[str]) -> "Rollouts | None":
        """The closed-loop evaluation of ``spec`` if it asks for one (``train.eval_rollouts``; in ``eval``
        mode ``rollout.episodes``) and its data is Meta-World's; else None."""
        if not spec["train"]["eval_rollouts"]:
            return None
        origin = metaworld_origin(urls)
        return None if origin is None else cls(spec, origin)

    @staticmethod
    def check(urls: list[str]) -> None:
        """Fail unless the data comes from Meta-World."""
        if metaworld_origin(urls) is None:
            raise SpecError(
                "train.eval_rollouts: closed-loop evaluation runs in Meta-World, and these shards do not come "
                "from `hlrp-lab data metaworld`; set it to 0"
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
