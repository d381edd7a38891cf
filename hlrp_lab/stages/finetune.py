"""Stage 3, finetune: the VLA plus an action head outputs continuous robot commands from a frame and an
instruction, trained on a small action-labelled set.

``train.init_from`` names the foundation run to start from (its weights and tokenizer); without it the same
architecture trains from scratch, the baseline that measures what latent pretraining brings. The action
head reads the last hidden states of the latent queries. Actions are scaled to [-1, 1] with the 1st and 99th
percentiles of the training actions (OpenVLA's normalisation), kept with the weights. Offline metric: the
mean squared error of the normalised actions on held-out scenes, against predicting the training mean.
With ``train.eval_rollouts`` (and in ``eval`` mode) the policy also runs closed loop in Meta-World.

Pictures (``draw``): the held-out pairs are random frames of their scenes, so the action traces come from whole
episodes instead: the first ``TRACE_EPISODES`` held-out episodes in shard order (training ones where
``data.val_split`` is 0), their first ``TRACE_FRAMES`` frames, predicted at every evaluation.
"""

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loguru import logger
from safetensors import safe_open
from torch import nn
from transformers import PreTrainedTokenizerBase

from hlrp_lab.components.action_head import ACTION_HEADS
from hlrp_lab.data.dataset import data_urls
from hlrp_lab.data.episode import Episode
from hlrp_lab.data.loader import FrameData
from hlrp_lab.data.pairs import is_val_scene
from hlrp_lab.data.shards import manifest_of, read_episodes
from hlrp_lab.lib.distributed import broadcast_from_main
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.runs import RunReference, resolve_reference
from hlrp_lab.lib.weights import load_weights
from hlrp_lab.stages import STAGES, pictures
from hlrp_lab.stages.config import FinetuneConfig
from hlrp_lab.stages.rollouts import Rollouts
from hlrp_lab.stages.vla import (
    LatentActionVLA,
    VLAStage,
    build_vla,
    in_batches,
    placeholder_tokenizer,
    prepare_tokenizer,
    reference_tokenizer_dir,
    run_tokenizer,
)

STATS_PAIRS = 4096  # training pairs for the action statistics at scene level
CHECK_ACTION_DIM = 4  # a spec is dry-built with this many action dimensions (the data sets the real number)
TRACE_EPISODES, TRACE_FRAMES = 2, 48  # the action traces picture: episodes, their first frames


class VLAPolicy(nn.Module):
    """The VLA's latent-query features -> action head; actions in robot units outside, [-1, 1] inside."""

    def __init__(self, vla: LatentActionVLA, action_head: nn.Module, action_dim: int):
        super().__init__()
        self.vla, self.action_head = vla, action_head
        vla.latent_head.requires_grad_(False)  # kept with the weights; the action head reads the queries
        self.register_buffer("action_low", -torch.ones(action_dim))  # saved with the weights
        self.register_buffer("action_high", torch.ones(action_dim))

    def features(self, frames: torch.Tensor, instructions: list[str]) -> torch.Tensor:
        return self.vla.query_states(frames, instructions).flatten(1).float()

    def normalize(self, actions: torch.Tensor) -> torch.Tensor:
        scaled = 2 * (actions - self.action_low) / (self.action_high - self.action_low).clamp_min(1e-6) - 1
        return scaled.clamp(-1, 1)

    def denormalize(self, scaled: torch.Tensor) -> torch.Tensor:
        return (scaled + 1) / 2 * (self.action_high - self.action_low) + self.action_low

    def loss(self, frames: torch.Tensor, instructions: list[str], actions: torch.Tensor) -> torch.Tensor:
        return self.action_head.loss(self.features(frames, instructions), self.normalize(actions))

    def forward(self, frames: torch.Tensor, instructions: list[str]) -> torch.Tensor:
        """Actions (B, chunk, action_dim) in robot units."""
        return self.denormalize(self.action_head.predict(self.features(frames, instructions)))


def architecture(block: dict) -> dict:
    """A component block without the keys that only say how it trains or loads."""
    return {key: value for key, value in block.items() if key not in ("freeze", "freeze_vision", "dtype")}


def foundation_reference(spec: dict) -> RunReference | None:
    """The foundation run of ``train.init_from``, whose backbone and latent head must be this spec's."""
    if spec["train"]["init_from"] is None:
        return None
    reference = resolve_reference(spec["train"]["init_from"], "train.init_from")
    foundation = reference.spec()
    if foundation["stage"] != "foundation":
        raise SpecError(
            f"train.init_from: {reference.run_dir} is a {foundation['stage']!r} run, not foundation"
        )
    for family in ("vla", "latent_head"):
        if architecture(foundation["model"][family]) != architecture(spec["model"][family]):
            raise SpecError(
                f"model.{family}: differs from the foundation run {reference.run_dir.name}'s "
                f"({foundation['model'][family]}); use the same block to start from its weights"
            )
    return reference


def trace_episodes(urls: list[str], val_split: float) -> list[Episode]:
    """The first ``TRACE_EPISODES`` held-out episodes of the shards (training ones when ``val_split`` is 0), cut
    to their first ``TRACE_FRAMES`` frames that have an action."""
    found = []
    for episode in read_episodes(urls):
        if len(episode.actions) >= 2 and (val_split == 0 or is_val_scene(episode.scene, val_split)):
            count = min(len(episode.actions), TRACE_FRAMES)
            frames, actions = episode.frames[:count].copy(), episode.actions[:count].copy()
            found.append(
                dataclasses.replace(episode, frames=frames, actions=actions, states=None, success=None)
            )
        if len(found) == TRACE_EPISODES:
            break
    return found


def no_actions(data: dict) -> str:
    """The error for data without actions."""
    return f"data: {data['shards'] or data['source']} has no actions to finetune on; use demonstrations with actions"


@STAGES.register_as("finetune")
class FinetuneStage(VLAStage):
    Config = FinetuneConfig
    target = "action_chunk"

    @classmethod
    def prepare_data(cls, spec: dict) -> list[str]:
        urls = super().prepare_data(spec)
        manifest = manifest_of(urls)
        if manifest is not None and "actions.npy" not in manifest.get("keys", {}):
            raise SpecError(no_actions(spec["data"]))
        if spec["train"]["eval_rollouts"]:
            Rollouts.check(urls)
        reference = foundation_reference(spec)
        if reference is not None and not reference_tokenizer_dir(reference).is_dir():
            raise SpecError(
                f"train.init_from: {reference.run_dir} has no tokenizer {reference_tokenizer_dir(reference).name}/ "
                "(removed with its trial's models?); name a run that kept it"
            )
        return urls

    @classmethod
    def prepare(cls, spec: dict) -> None:
        prepare_tokenizer(spec, data_urls(spec["data"]), foundation_reference(spec))

    @classmethod
    def build_model(
        cls,
        spec: dict,
        tokenizer: PreTrainedTokenizerBase | None = None,
        action_dim: int = CHECK_ACTION_DIM,
    ) -> VLAPolicy:
        vla = build_vla(spec, tokenizer or placeholder_tokenizer(spec))
        features = vla.num_queries * vla.backbone.hidden_size
        head = ACTION_HEADS.build(
            spec["model"]["action_head"],
            "model.action_head",
            feature_dim=features,
            action_dim=action_dim,
            chunk=spec["data"]["action_chunk"],
        )
        return VLAPolicy(vla, head, action_dim)

    @classmethod
    def model_for_weights(cls, spec: dict, tokenizer: PreTrainedTokenizerBase, weights: Path) -> VLAPolicy:
        with safe_open(str(weights), framework="pt") as f:
            action_dim = f.get_slice("action_low").get_shape()[0]
        return cls.build_model(spec, tokenizer, action_dim)

    def __init__(self, spec: dict, device: torch.device, seed: int):
        data = spec["data"]
        urls = data_urls(data)
        self.data = FrameData(urls, data, spec["train"], seed, STATS_PAIRS, probe_keys=("action_chunk",))
        if "action_chunk" not in self.data.val:
            raise SpecError(no_actions(data))
        actions = self.training_actions()
        self.train_actions = torch.from_numpy(actions).to(device)  # for the mean-action baseline
        self.batch_size, self.device = self.data.micro_batch, device  # evaluation chunks, as in training
        self.model = self.build_model(spec, run_tokenizer(spec), actions.shape[1]).to(device)
        low, high = np.percentile(actions, [1, 99], axis=0)
        self.model.action_low.copy_(torch.from_numpy(low))
        self.model.action_high.copy_(torch.from_numpy(high))
        reference = foundation_reference(spec)
        if reference is not None:
            load_weights(self.model.vla, reference.weights, device)
            logger.info(f"finetuning from {reference.weights}")
        self.rollouts = Rollouts.of_data(spec, urls)
        self.trace_episodes = trace_episodes(urls, data["val_split"])
        self.traces: list[pictures.Trace] = []  # of the latest evaluation, for draw()
        self.rollout_metrics: dict[str, float] = {}  # likewise: closed-loop success

    def training_actions(self) -> np.ndarray:
        """(N, action_dim) actions of the training scenes: all of them at pair level, else a sample."""
        if self.data.data["pairs"] == "pair":
            return np.concatenate([e.actions for e in self.data.train_episodes])
        return self.data.probe["action_chunk"][:, 0]

    def train_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.model.loss(batch["frame_t"], batch["instruction"], batch["action_chunk"]), {}

    def evaluate(self) -> dict[str, float]:
        val = self.data.val
        predicted = self.model.normalize(self.predict(val["frame_t"], val["instruction"]))
        target = self.model.normalize(torch.from_numpy(val["action_chunk"]).to(predicted.device))
        train_mean = self.model.normalize(self.train_actions).mean(0)
        metrics = {
            "val_action_mse": (predicted - target).pow(2).mean().item(),
            "val_action_l1": (predicted - target).abs().mean().item(),
            "mean_action_mse": (train_mean - target).pow(2).mean().item(),
            "data/skipped_shards": float(len(self.data.skipped)),
        }
        if self.rollouts is not None:
            self.rollout_metrics = self.rollouts.run(self.policy)
            metrics.update(self.rollout_metrics)
        self.traces = [self.trace(episode) for episode in self.trace_episodes]
        return metrics

    def trace(self, episode: Episode) -> pictures.Trace:
        """The true actions of ``episode``'s frames and the first action of the chunk predicted at each."""
        predicted = self.predict(episode.frames, [episode.instruction] * len(episode.frames))[:, 0]
        side = "held-out" if self.data.data["val_split"] > 0 else "training"
        label = f"{side} episode {episode.scene} ({episode.task})"
        return pictures.Trace(label, episode.actions, predicted.cpu().numpy())

    def draw(self, folder: Path, prefix: str) -> list[Path]:
        """Predicted vs true action traces, and the closed-loop success per task where rollouts ran, of the latest
        evaluation (drawn from what evaluate() kept: the model is not called, so a sharded model needs no other
        rank)."""
        paths = [pictures.action_traces(folder / f"{prefix}actions.png", self.traces)] if self.traces else []
        if self.rollout_metrics:
            rollout, path = self.rollout_metrics, folder / f"{prefix}success.png"
            rates = {
                key.removeprefix("success/"): v for key, v in rollout.items() if key.startswith("success/")
            }
            paths.append(pictures.success(path, rates, rollout["success_rate"], self.rollouts.episodes))
        return paths

    def predict(self, frames: np.ndarray, instructions: list[str]) -> torch.Tensor:
        """Action chunks (N, chunk, action_dim) in robot units for uint8 frames (N, H, W, 3), in batches."""
        return in_batches(self.model, frames, instructions, self.batch_size, self.device)

    def policy(self, frames: np.ndarray, instructions: list[str]) -> np.ndarray:
        """The first action of each predicted chunk (receding horizon), for closed-loop rollouts: rank 0's on
        every rank, so that the ranks' episodes (and so their calls of a sharded model) stay in step."""
        return broadcast_from_main(self.predict(frames, instructions)[:, 0].cpu().numpy())
