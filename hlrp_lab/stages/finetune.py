"""Stage 3, finetune: the VLA plus an action head outputs continuous robot commands from a frame and an
instruction, trained on a small action-labelled set.

``train.init_from`` names the foundation run to start from (its weights and tokenizer); without it the same
architecture trains from scratch, the baseline that measures what latent pretraining brings. The action
head reads the last hidden states of the latent queries. Actions are scaled to [-1, 1] with the 1st and 99th
percentiles of the training actions (OpenVLA's normalisation), kept with the weights. Offline metric: the
mean squared error of the normalised actions on held-out scenes, against predicting the training mean.
With ``train.eval_rollouts`` (and in ``eval`` mode) the policy also runs closed loop in the world of its data
(Meta-World, or the push world of the procedural data), executing ``rollout.n_action_steps`` actions of each
predicted chunk before predicting again.

With ``data.use_state`` the policy also reads each frame's proprio state (Meta-World: hand xyz and gripper, as
LeRobot's ``observation.state``): standardised with the training states' mean and std (kept with the weights),
projected by a linear layer to the backbone's width and concatenated with the VLA features. Training reads the
states of the shards, closed loop the simulator's (``Observation.agent_states``, the same 4 values).

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
from hlrp_lab.data.pairs import is_val_scene, to_float
from hlrp_lab.data.shards import manifest_of, read_episodes
from hlrp_lab.lib.distributed import broadcast_from_main
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.runs import RunReference, resolve_reference
from hlrp_lab.lib.weights import load_weights
from hlrp_lab.stages import STAGES, pictures
from hlrp_lab.stages.config import FinetuneConfig
from hlrp_lab.stages.rollouts import check_action_steps, check_simulated, rollouts_of_data
from hlrp_lab.stages.vla import (
    LatentActionVLA,
    VLAStage,
    build_vla,
    placeholder_tokenizer,
    prepare_tokenizer,
    reference_tokenizer_dir,
    run_tokenizer,
)

STATS_PAIRS = 4096  # training pairs for the action statistics at scene level
CHECK_ACTION_DIM = 4  # a spec is dry-built with this many action dimensions (the data sets the real number)
CHECK_STATE_DIM = 4  # likewise, state dimensions (with data.use_state)
TRACE_EPISODES, TRACE_FRAMES = 2, 48  # the action traces picture: episodes, their first frames


class VLAPolicy(nn.Module):
    """The VLA's latent-query features (and, with ``state_dim``, the projected proprio state) -> action head;
    actions in robot units outside, [-1, 1] inside."""

    def __init__(self, vla: LatentActionVLA, action_head: nn.Module, action_dim: int, state_dim: int = 0):
        super().__init__()
        self.vla, self.action_head = vla, action_head
        vla.latent_head.requires_grad_(False)  # kept with the weights; the action head reads the queries
        self.register_buffer("action_low", -torch.ones(action_dim))  # saved with the weights
        self.register_buffer("action_high", torch.ones(action_dim))
        self.state_projection = nn.Linear(state_dim, vla.backbone.hidden_size) if state_dim else None
        if state_dim:
            self.register_buffer("state_mean", torch.zeros(state_dim))
            self.register_buffer("state_std", torch.ones(state_dim))

    def features(
        self, frames: torch.Tensor, instructions: list[str], states: torch.Tensor | None = None
    ) -> torch.Tensor:
        features = self.vla.query_states(frames, instructions).flatten(1).float()
        if self.state_projection is None:
            return features
        if states is None:
            raise ValueError("this policy reads proprio states (data.use_state): pass them")
        standard = (states.float() - self.state_mean) / self.state_std.clamp_min(1e-6)
        return torch.cat([features, self.state_projection(standard).float()], dim=1)

    def normalize(self, actions: torch.Tensor) -> torch.Tensor:
        scaled = 2 * (actions - self.action_low) / (self.action_high - self.action_low).clamp_min(1e-6) - 1
        return scaled.clamp(-1, 1)

    def denormalize(self, scaled: torch.Tensor) -> torch.Tensor:
        return (scaled + 1) / 2 * (self.action_high - self.action_low) + self.action_low

    def loss(
        self,
        frames: torch.Tensor,
        instructions: list[str],
        actions: torch.Tensor,
        states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.action_head.loss(self.features(frames, instructions, states), self.normalize(actions))

    def forward(
        self, frames: torch.Tensor, instructions: list[str], states: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Actions (B, chunk, action_dim) in robot units."""
        return self.denormalize(self.action_head.predict(self.features(frames, instructions, states)))


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
            states = None if episode.states is None else episode.states[:count].copy()
            found.append(
                dataclasses.replace(episode, frames=frames, actions=actions, states=states, success=None)
            )
        if len(found) == TRACE_EPISODES:
            break
    return found


def no_actions(data: dict) -> str:
    """The error for data without actions."""
    return f"data: {data['shards'] or data['source']} has no actions to finetune on; use demonstrations with actions"


def no_states(data: dict) -> str:
    """The error for ``data.use_state`` on data without proprio states."""
    return (
        f"data.use_state: {data['shards'] or data['source']} has no proprio states; use demonstrations with "
        "states (hlrp-lab data metaworld) or set it to false"
    )


@STAGES.register_as("finetune")
class FinetuneStage(VLAStage):
    Config = FinetuneConfig
    target = "action_chunk"

    @classmethod
    def prepare_data(cls, spec: dict) -> list[str]:
        check_action_steps(spec)
        urls = super().prepare_data(spec)
        manifest = manifest_of(urls)
        if manifest is not None and "actions.npy" not in manifest.get("keys", {}):
            raise SpecError(no_actions(spec["data"]))
        if (
            spec["data"]["use_state"]
            and manifest is not None
            and "states.npy" not in manifest.get("keys", {})
        ):
            raise SpecError(no_states(spec["data"]))
        if spec["train"]["eval_rollouts"]:
            check_simulated(urls)
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
        state_dim: int = CHECK_STATE_DIM,
    ) -> VLAPolicy:
        """The policy; ``state_dim`` counts only with ``data.use_state``."""
        vla = build_vla(spec, tokenizer or placeholder_tokenizer(spec))
        state_dim = state_dim if spec["data"]["use_state"] else 0
        features = (vla.num_queries + (state_dim > 0)) * vla.backbone.hidden_size
        head = ACTION_HEADS.build(
            spec["model"]["action_head"],
            "model.action_head",
            feature_dim=features,
            action_dim=action_dim,
            chunk=spec["data"]["action_chunk"],
        )
        return VLAPolicy(vla, head, action_dim, state_dim)

    @classmethod
    def model_for_weights(cls, spec: dict, tokenizer: PreTrainedTokenizerBase, weights: Path) -> VLAPolicy:
        with safe_open(str(weights), framework="pt") as f:
            names = f.keys()
            action_dim = f.get_slice("action_low").get_shape()[0]
            state_dim = f.get_slice("state_mean").get_shape()[0] if "state_mean" in names else 0
        return cls.build_model(spec, tokenizer, action_dim, state_dim)

    def __init__(self, spec: dict, device: torch.device, seed: int):
        data = spec["data"]
        urls = data_urls(data)
        self.use_state = data["use_state"]
        probe_keys = ("action_chunk", "state") if self.use_state else ("action_chunk",)
        self.data = FrameData(urls, data, spec["train"], seed, STATS_PAIRS, probe_keys=probe_keys)
        if "action_chunk" not in self.data.val:
            raise SpecError(no_actions(data))
        if self.use_state and "state" not in self.data.val:
            raise SpecError(no_states(data))
        actions = self.training_actions()
        self.train_actions = torch.from_numpy(actions).to(device)  # for the mean-action baseline
        self.batch_size, self.device = self.data.micro_batch, device  # evaluation chunks, as in training
        states = self.training_states() if self.use_state else None
        state_dim = 0 if states is None else states.shape[1]
        self.model = self.build_model(spec, run_tokenizer(spec), actions.shape[1], state_dim).to(device)
        low, high = np.percentile(actions, [1, 99], axis=0)
        self.model.action_low.copy_(torch.from_numpy(low))
        self.model.action_high.copy_(torch.from_numpy(high))
        if states is not None:
            self.model.state_mean.copy_(torch.from_numpy(states.mean(0)))
            self.model.state_std.copy_(torch.from_numpy(states.std(0)))
        reference = foundation_reference(spec)
        if reference is not None:
            load_weights(self.model.vla, reference.weights, device)
            logger.info(f"finetuning from {reference.weights}")
        self.rollouts = rollouts_of_data(spec, urls)
        self.trace_episodes = trace_episodes(urls, data["val_split"])
        self.traces: list[pictures.Trace] = []  # of the latest evaluation, for draw()
        self.rollout_metrics: dict[str, float] = {}  # likewise: closed-loop success

    def training_actions(self) -> np.ndarray:
        """(N, action_dim) actions of the training scenes: all of them at pair level, else a sample."""
        if self.data.data["pairs"] == "pair":
            return np.concatenate([e.actions for e in self.data.train_episodes])
        return self.data.probe["action_chunk"][:, 0]

    def training_states(self) -> np.ndarray:
        """(N, state_dim) proprio states of the training scenes' frames: all at pair level, else a sample."""
        if self.data.data["pairs"] == "pair":
            episodes = self.data.train_episodes
            if any(e.states is None for e in episodes):
                raise SpecError(no_states(self.data.data))
            return np.concatenate([e.states for e in episodes]).astype(np.float32)
        if "state" not in self.data.probe:
            raise SpecError(no_states(self.data.data))
        return self.data.probe["state"].astype(np.float32)

    def train_batch(self, index: int) -> dict[str, Any]:
        """Frames, instructions and action chunks (``VLAStage``), and with ``data.use_state`` the states."""
        if not self.use_state:
            return super().train_batch(index)
        batch = self.data.train_batch(index)
        keys = ("frame_t", "action_chunk", "state")
        return {
            **to_float({key: batch[key] for key in keys}, self.device),
            "instruction": batch["instruction"],
        }

    def train_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        frames, instructions, actions = batch["frame_t"], batch["instruction"], batch["action_chunk"]
        return self.model.loss(frames, instructions, actions, batch.get("state")), {}

    def state_inputs(self, source: dict[str, Any]) -> dict[str, np.ndarray]:
        """``predict``'s ``states`` from a batch or pairs of ``source`` where the policy reads them."""
        return {"states": source["state"]} if self.use_state else {}

    def evaluate(self) -> dict[str, float]:
        val = self.data.val
        predicted = self.model.normalize(
            self.predict(val["frame_t"], val["instruction"], **self.state_inputs(val))
        )
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
        instructions = [episode.instruction] * len(episode.frames)
        states = self.state_inputs({"state": episode.states})
        predicted = self.predict(episode.frames, instructions, **states)[:, 0]
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
            paths.append(pictures.success(path, rates, rollout["success_rate"], self.rollouts.counted))
        return paths

    def predict(
        self, frames: np.ndarray, instructions: list[str], states: np.ndarray | None = None
    ) -> torch.Tensor:
        """Action chunks (N, chunk, action_dim) in robot units for uint8 frames (N, H, W, 3) (and proprio states
        (N, state_dim) with ``data.use_state``), in batches of the training micro-batch."""
        parts = []
        for start in range(0, len(frames), self.batch_size):
            rows = slice(start, start + self.batch_size)
            arrays = (
                {"frame_t": frames[rows]}
                if states is None
                else {"frame_t": frames[rows], "state": states[rows]}
            )
            batch = to_float(arrays, self.device)
            parts.append(self.model(batch["frame_t"], instructions[rows], batch.get("state")).float())
        return torch.cat(parts)

    def policy(self, frames: np.ndarray, instructions: list[str], states: np.ndarray) -> np.ndarray:
        """The predicted action chunks, for closed-loop rollouts (which execute ``rollout.n_action_steps`` of
        each): rank 0's on every rank, so that the ranks' episodes (and so their calls of a sharded model) stay
        in step. ``states`` (the simulator's agent states) are read with ``data.use_state``."""
        chunks = self.predict(frames, instructions, **self.state_inputs({"state": states}))
        return broadcast_from_main(chunks.cpu().numpy())
