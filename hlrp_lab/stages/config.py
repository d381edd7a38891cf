"""What each stage declares without torch: its component families, its metric, and the spec keys it adds to
the framework's sections (``sections``), so that the framework schema holds framework keys only.

A section model named like a framework section (``train``, ``data``) adds keys to it; any other name is a
section of its own (``rollout``). The stage's training logic (``laq.py``, ...) points here with ``Config``.
"""

from typing import ClassVar, Literal

from pydantic import BaseModel, Field, NonNegativeInt, PositiveInt, model_validator

from hlrp_lab.components.action_head import ACTION_HEADS
from hlrp_lab.components.decoder import DECODERS
from hlrp_lab.components.encoder import ENCODERS
from hlrp_lab.components.latent_head import LATENT_HEADS
from hlrp_lab.components.quantizer import QUANTIZERS
from hlrp_lab.components.vla import VLAS
from hlrp_lab.data.sources import DATA_SOURCES
from hlrp_lab.env.metaworld_tasks import MAX_PATH_LENGTH
from hlrp_lab.lib.registry import Registry, Strict
from hlrp_lab.stages import STAGES


class StageConfig:
    """The torch-free half of a stage."""

    families: ClassVar[dict[str, Registry]]  # component families of spec["model"]
    metric: ClassVar[str]  # picks the `best` checkpoint (and is what a search optimizes)
    metric_mode: ClassVar[Literal["max", "min"]]
    graph_metrics: ClassVar[tuple[str, ...]] = ("loss",)  # curves drawn in graph/
    sections: ClassVar[dict[str, type[BaseModel]]] = {}  # spec keys the stage adds, by section
    # Whether FSDP may shard the model; such a stage writes its `last` checkpoint with
    # torch.distributed.checkpoint (sharded, any world size can resume it) and `best` as one safetensors file.
    shardable: ClassVar[bool] = False

    @classmethod
    def auto_strategy(cls, spec: dict) -> str:
        """What ``train.distributed.strategy`` auto means for this stage on several ranks."""
        return "ddp"

    @classmethod
    def eval_mode(cls, spec: dict) -> dict:
        """``spec`` as ``eval`` mode runs it (e.g. with closed-loop episodes)."""
        return spec


class AugmentConfig(Strict):
    """A random resized crop and colour jitter, drawn per pair and applied alike to both frames of each training
    pair (never to held-out pairs); data/augment.py."""

    crop_scale: list[float] = Field(
        [0.8, 1.0],
        min_length=2,
        max_length=2,
        description="Area of the crop as a fraction of the frame: [min, max], in (0, 1].",
    )
    crop_ratio: list[float] = Field(
        [3 / 4, 4 / 3],
        min_length=2,
        max_length=2,
        description="Width / height of the crop: [min, max], drawn log-uniform.",
    )
    brightness: float = Field(0.2, ge=0, description="Brightness factor drawn from [1 - x, 1 + x].")
    contrast: float = Field(0.2, ge=0, description="Contrast factor drawn from [1 - x, 1 + x].")
    saturation: float = Field(0.2, ge=0, description="Saturation factor drawn from [1 - x, 1 + x].")
    hue: float = Field(0.0, ge=0, le=0.5, description="Hue rotation drawn from [-x, x] turns.")

    @model_validator(mode="after")
    def check_ranges(self) -> "AugmentConfig":
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale {self.crop_scale}: give [min, max] with 0 < min <= max <= 1")
        low, high = self.crop_ratio
        if not 0 < low <= high:
            raise ValueError(f"crop_ratio {self.crop_ratio}: give [min, max] with 0 < min <= max")
        return self


class LAQData(Strict):
    augment: AugmentConfig | None = Field(
        None,
        description='Augment training pairs, e.g. {"crop_scale": [0.8, 1.0], "brightness": 0.2}; null: none.',
    )


class SupervisionConfig(Strict):
    """A little action supervision (LAOM): the training pairs of a fixed fraction of the scenes keep their true
    action, and an MLP on the latent action learns to predict it (standardised) in a supervised loss."""

    fraction: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Fraction of the training scenes whose pairs are labelled (a fixed hash of the scene "
        "name: the same scenes in every step and run); 0: no supervision, no head.",
    )
    weight: float = Field(1.0, ge=0, description="Weight of the supervised action loss in the total loss.")
    hidden: PositiveInt = Field(128, description="Width of the action head's hidden layer.")


@STAGES.register_config("laq")
class LAQConfig(StageConfig):
    families: ClassVar[dict[str, Registry]] = {
        "encoder": ENCODERS,
        "quantizer": QUANTIZERS,
        "decoder": DECODERS,
    }
    metric = "val_psnr"
    metric_mode = "max"
    graph_metrics = ("loss", "val_psnr", "psnr_gain", "latent_gain", "perplexity", "probe_r2")
    sections: ClassVar[dict[str, type[BaseModel]]] = {"data": LAQData, "supervision": SupervisionConfig}

    @staticmethod
    def latent_codes(spec: dict) -> tuple[int, int | None]:
        """(tokens per transition, codes per token; None for a continuous latent) of an LAQ spec."""
        config = QUANTIZERS.config(spec["model"]["quantizer"], "model.quantizer")
        return config.num_tokens, config.codes


class VLAStageConfig(StageConfig):
    """A stage built on a VLA backbone: FSDP shards it, unless it is frozen and only the heads train."""

    shardable = True

    @classmethod
    def auto_strategy(cls, spec: dict) -> str:
        return "ddp" if spec["model"]["vla"].get("freeze") else "fsdp"


@STAGES.register_config("foundation")
class FoundationConfig(VLAStageConfig):
    families: ClassVar[dict[str, Registry]] = {"vla": VLAS, "latent_head": LATENT_HEADS}
    metric = "val_token_acc"
    metric_mode = "max"
    graph_metrics = (
        "loss",
        "token_acc",
        "val_token_acc",
        "val_top3_acc",
        "val_exact_match",
        "majority_token_acc",
    )


class FinetuneTrain(Strict):
    init_from: str | None = Field(
        None,
        description="Start from the weights of a foundation run: a run directory, a .safetensors file, or "
        "latest:<spec_name> (the newest run of that spec under data/); null trains from scratch.",
    )
    eval_rollouts: NonNegativeInt = Field(
        0,
        description="Closed-loop episodes at each evaluation, on Meta-World data per task, on procedural data in "
        "all (0: none; `eval` mode uses rollout.episodes). Settings in `rollout`.",
    )


class FinetuneData(Strict):
    action_chunk: PositiveInt = Field(
        1,
        description="Actions t .. t+action_chunk-1 are the target of frame t (padded with the episode's last "
        "action).",
    )
    use_state: bool = Field(
        False,
        description="Feed each frame's proprio state to the policy (Meta-World: hand xyz and gripper opening, "
        "LeRobot's observation.state), in training from the shards and in closed loop from the simulator: "
        "standardised, projected to the backbone's width and concatenated with the VLA features before the "
        "action head. Needs shards with states.",
    )


class RolloutConfig(Strict):
    """Closed-loop evaluation in the world of the data: Meta-World (with the camera and image size of the
    data), or the push world of the procedural data (its scenes, tasks drawn as the data draws them)."""

    episodes: PositiveInt = Field(
        10,
        description="`eval` mode: Meta-World: episodes per task; push world: episodes in all; fixed seeds.",
    )
    max_steps: PositiveInt = Field(
        MAX_PATH_LENGTH,
        le=MAX_PATH_LENGTH,
        description="Steps per episode at most (LeRobot's protocol: Meta-World's limit of 500; the push world's "
        "data has episode_length - 1); an episode ends at success.",
    )
    seed: NonNegativeInt = Field(
        1000, description="Evaluation seed: episode i of a task gets a seed from (seed, task, i)."
    )
    workers: PositiveInt = Field(
        2,
        description="Meta-World: simulator processes stepping episodes in parallel (the push world steps "
        "in the run's process).",
    )
    videos: NonNegativeInt = Field(2, description="Episodes saved as mp4 in graph/.")
    tasks: list[str] | None = Field(
        None, description="Meta-World tasks to evaluate; null: every task in the data (push world: null)."
    )
    n_action_steps: PositiveInt = Field(
        1,
        description="Actions of each predicted chunk executed before the policy predicts again (LeRobot's "
        "n_action_steps; 1 re-plans every step, as SmolVLA's Meta-World evaluation); at most data.action_chunk.",
    )


@STAGES.register_config("finetune")
class FinetuneConfig(VLAStageConfig):
    families: ClassVar[dict[str, Registry]] = {
        "vla": VLAS,
        "latent_head": LATENT_HEADS,
        "action_head": ACTION_HEADS,
    }
    metric = "val_action_mse"
    metric_mode = "min"
    graph_metrics = ("loss", "val_action_mse", "mean_action_mse", "success_rate")
    sections: ClassVar[dict[str, type[BaseModel]]] = {
        "train": FinetuneTrain,
        "data": FinetuneData,
        "rollout": RolloutConfig,
    }

    @classmethod
    def eval_mode(cls, spec: dict) -> dict:
        """``eval`` runs ``rollout.episodes`` closed-loop episodes per task (where the data allows)."""
        spec["train"]["eval_rollouts"] = spec["rollout"]["episodes"]
        return spec


@DATA_SOURCES.register_config("label")
class LabelConfig(Strict):
    """A data source that needs a stage: episodes of shards labelled with an LAQ run's codes (label.py)."""

    laq: str = Field(
        description="The LAQ run: a run directory, a .safetensors file of one, or latest:<spec_name>."
    )
    shards: str | None = Field(
        None, description="Shards to label (directory, glob, brace pattern); null: the LAQ run's own data."
    )
    offset: int | None = Field(
        None, gt=0, description="k of the labelled pairs (t, t+k); null: the LAQ run's first data.offsets."
    )
    batch_size: int = Field(256, gt=0, description="Pairs per LAQ forward pass.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available.")
