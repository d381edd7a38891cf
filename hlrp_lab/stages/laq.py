"""Stage 1, LAQ: a VQ-VAE over the transition frame t -> frame t+k, whose codes are latent actions."""

from typing import Any, ClassVar, NamedTuple

import torch
from loguru import logger
from torch import nn
from torch.nn import functional as F

from hlrp_lab.components.registry import DECODERS, ENCODERS, QUANTIZERS, STAGES, Registry
from hlrp_lab.data.dataset import load_episodes, prepare_shards
from hlrp_lab.data.pairs import FramePairs, batch_indices, split_episodes
from hlrp_lab.data.shards import read_manifest
from hlrp_lab.stages.base import Stage
from hlrp_lab.stages.metrics import codebook_usage, linear_probe_r2, per_image_mse, psnr

CHANNELS = 3
PROBE_TRAIN_PAIRS = 1024


class LAQOutput(NamedTuple):
    reconstruction: torch.Tensor  # (B, C, H, W), frame t+k predicted from frame t and the latent action
    latent: torch.Tensor  # (B, num_tokens, dim), quantized latent action
    indices: torch.Tensor | None  # (B, num_tokens) code ids, None for a continuous latent
    quantizer_loss: torch.Tensor


class LatentActionModel(nn.Module):
    """Encoder (both frames -> action tokens), quantizer, decoder (frame t + tokens -> frame t+k)."""

    def __init__(self, encoder: nn.Module, quantizer: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder, self.quantizer, self.decoder = encoder, quantizer, decoder

    def forward(self, frame_t: torch.Tensor, frame_tk: torch.Tensor) -> LAQOutput:
        quantized = self.quantizer(self.encoder(frame_t, frame_tk))
        reconstruction = self.decoder(frame_t, quantized.quantized)
        return LAQOutput(reconstruction, quantized.quantized, quantized.indices, quantized.loss)


@STAGES.register_as("laq")
class LAQStage(Stage):
    families: ClassVar[dict[str, Registry]] = {
        "encoder": ENCODERS,
        "quantizer": QUANTIZERS,
        "decoder": DECODERS,
    }
    metric = "val_psnr"
    metric_mode = "max"
    graph_metrics = ("loss", "val_psnr", "psnr_gain", "latent_gain", "perplexity", "probe_r2")

    @classmethod
    def prepare(cls, spec: dict) -> None:
        directory = prepare_shards(spec["data"])
        logger.info(f"data: {read_manifest(directory)['num_episodes']} episodes in shards at {directory}")

    @classmethod
    def build_model(cls, spec: dict) -> LatentActionModel:
        model, size = spec["model"], spec["data"]["image_size"]
        quantizer = QUANTIZERS.build(model["quantizer"], "model.quantizer")
        tokens, dim = quantizer.num_tokens, quantizer.dim
        encoder = ENCODERS.build(
            model["encoder"],
            "model.encoder",
            image_size=size,
            channels=CHANNELS,
            num_tokens=tokens,
            out_dim=dim,
        )
        decoder = DECODERS.build(
            model["decoder"],
            "model.decoder",
            image_size=size,
            channels=CHANNELS,
            latent_dim=dim,
            num_tokens=tokens,
        )
        return LatentActionModel(encoder, quantizer, decoder)

    def __init__(self, spec: dict, device: torch.device, seed: int):
        data = spec["data"]
        train_episodes, val_episodes = split_episodes(load_episodes(data), data["val_split"], seed=0)
        if not val_episodes:
            logger.warning("data.val_split is 0: evaluating on training pairs")
            val_episodes = train_episodes
        self.train_pairs = FramePairs(train_episodes, data["frame_offset"])
        self.val_pairs = FramePairs(val_episodes, data["frame_offset"])
        self.val_index = fixed_subset(len(self.val_pairs), data["val_pairs"])
        self.probe_index = fixed_subset(len(self.train_pairs), PROBE_TRAIN_PAIRS)
        self.batch_size, self.seed, self.device = data["batch_size"], seed, device
        self.model = self.build_model(spec).to(device)

    def train_batch(self, index: int) -> dict[str, Any]:
        indices = batch_indices(len(self.train_pairs), self.batch_size, self.seed, index)
        return to_device(self.train_pairs.batch(indices), self.device)

    def train_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.model(batch["frame_t"], batch["frame_tk"])
        reconstruction_loss = F.mse_loss(out.reconstruction.float(), batch["frame_tk"])
        loss = reconstruction_loss + out.quantizer_loss
        return loss, {
            "reconstruction_loss": reconstruction_loss.detach(),
            "quantizer_loss": out.quantizer_loss.detach(),
        }

    def evaluate(self) -> dict[str, float]:
        val = self.infer(self.val_pairs, self.val_index)
        mse, copy_mse = val["mse"], val["copy_mse"]
        metrics = {
            "val_mse": mse.mean().item(),
            "val_psnr": psnr(mse).item(),
            "copy_mse": copy_mse.mean().item(),
            "copy_psnr": psnr(copy_mse).item(),
        }
        metrics["psnr_gain"] = metrics["val_psnr"] - metrics["copy_psnr"]
        metrics["latent_gain"] = metrics["val_psnr"] - psnr(val["shuffled_mse"]).item()
        if val["indices"] is not None:
            metrics.update(codebook_usage(val["indices"], self.model.quantizer.codebook_size))
        if val["action"] is not None:
            probe = self.infer(self.train_pairs, self.probe_index)
            metrics["probe_r2"] = linear_probe_r2(
                probe["latent"], probe["action"], val["latent"], val["action"]
            )
        return metrics

    def infer(self, pairs: FramePairs, index: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Run the model over ``pairs[index]`` in batches: per-pair errors (also with the latent of another
        pair, which shows how much the latent carries), latents, codes and true actions."""
        keys = ("mse", "copy_mse", "shuffled_mse", "latent", "indices", "action")
        parts: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
        for chunk in index.split(self.batch_size):
            batch = to_device(pairs.batch(chunk), self.device)
            out = self.model(batch["frame_t"], batch["frame_tk"])
            shuffled = self.model.decoder(batch["frame_t"], out.latent.roll(1, dims=0))
            parts["mse"].append(per_image_mse(out.reconstruction, batch["frame_tk"]))
            parts["shuffled_mse"].append(per_image_mse(shuffled, batch["frame_tk"]))
            parts["copy_mse"].append(per_image_mse(batch["frame_t"], batch["frame_tk"]))
            parts["latent"].append(out.latent.float())
            if out.indices is not None:
                parts["indices"].append(out.indices)
            if "action" in batch:
                parts["action"].append(batch["action"])
        return {key: torch.cat(values) if values else None for key, values in parts.items()}


def fixed_subset(size: int, count: int) -> torch.Tensor:
    """The same ``count`` indices of ``range(size)`` in every session (seeded with 0)."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(0))[:count]


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }
