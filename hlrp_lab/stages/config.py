"""What each stage declares without torch: its component families, its metric, and the spec keys it adds to
the framework's sections (``sections``), so that the framework schema holds framework keys only.

A section model named like a framework section (``train``, ``data``) adds keys to it; any other name is a
section of its own (``rollout``). The stage's training logic (``laq.py``, ...) points here with ``Config``.
"""

from typing import ClassVar, Literal

from pydantic import BaseModel, Field, NonNegativeInt, PositiveInt

from hlrp_lab.components.action_head import ACTION_HEADS
from hlrp_lab.components.decoder import DECODERS
from hlrp_lab.components.encoder import ENCODERS
from hlrp_lab.components.latent_head import LATENT_HEADS
from hlrp_lab.components.quantizer import QUANTIZERS
from hlrp_lab.components.vla import VLAS
from hlrp_lab.data.sources import DATA_SOURCES
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
        description="On Meta-World data: closed-loop episodes per task at each evaluation (0: none; "
        "`eval` mode uses rollout.episodes). Settings in `rollout`.",
    )


class FinetuneData(Strict):
    action_chunk: PositiveInt = Field(
        1,
        description="Actions t .. t+action_chunk-1 are the target of frame t (padded with the episode's last "
        "action).",
    )


class RolloutConfig(Strict):
    """Closed-loop evaluation in Meta-World, with the camera and image size of the data."""

    episodes: PositiveInt = Field(10, description="`eval` mode: episodes per task, with fixed seeds.")
    max_steps: PositiveInt = Field(150, description="Steps per episode at most; an episode ends at success.")
    seed: NonNegativeInt = Field(
        1000, description="Evaluation seed: episode i of a task gets a seed from (seed, task, i)."
    )
    workers: PositiveInt = Field(2, description="Simulator processes stepping episodes in parallel.")
    videos: NonNegativeInt = Field(2, description="Episodes saved as mp4 in graph/.")
    tasks: list[str] | None = Field(None, description="Tasks to evaluate; null: every task in the data.")


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
