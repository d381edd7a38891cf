"""Stage 1, LAQ: a VQ-VAE over the transition frame t -> frame t+k, whose codes are latent actions.

The decoder predicts frame t+k's target from frame t's: the frame itself, or frozen features of it (a
``model.decoder.target``, built beside the model: never trained, never saved). Optional: augmentation of the
training pairs (``data.augment``) and a supervised action loss on a fixed fraction of the scenes
(``supervision``); docs/LAQ.md.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from loguru import logger
from safetensors import safe_open
from safetensors.torch import load_model
from torch import Tensor, nn
from torch.nn import functional as F

from hlrp_lab.components.decoder import DECODERS
from hlrp_lab.components.encoder import ENCODERS
from hlrp_lab.components.quantizer import QUANTIZERS
from hlrp_lab.components.target import TARGETS
from hlrp_lab.data.augment import augment_pairs, augment_seed
from hlrp_lab.data.dataset import data_urls
from hlrp_lab.data.loader import FrameData
from hlrp_lab.data.pairs import to_float
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.runs import RunReference
from hlrp_lab.stages import STAGES, pictures
from hlrp_lab.stages.base import Stage
from hlrp_lab.stages.config import LAQConfig
from hlrp_lab.stages.metrics import action_probes, code_counts, codebook_usage, per_sample_mse, psnr

CHANNELS = 3
PROBE_TRAIN_PAIRS = 1024
CHECK_ACTION_DIM = 2  # the action head's size in a dry build (the data's is known when the stage starts)
PIXELS = {"name": "Pixels"}  # the target of a decoder block that names none (runs saved before targets)
NO_SUPERVISION = {"fraction": 0.0}  # likewise for the supervision section
ACTION_STATS = "action_head.action_mean"  # a supervised LAQ's weights hold it, sized as the actions
RECONSTRUCTED_PAIRS = 6  # held-out pairs in the reconstruction picture
# The atlas: up to 3 frames, 4 tokens, 8 rows (frames x tokens) and the 12 most used codes of each token.
ATLAS_FRAMES, ATLAS_TOKENS, ATLAS_ROWS, ATLAS_CODES = 3, 4, 8, 12
EXAMPLE_TOKENS, EXAMPLE_CODES, EXAMPLES_PER_CODE = 4, 3, 3  # code examples: tokens, codes of each, pairs


class LAQOutput(NamedTuple):
    reconstruction: torch.Tensor  # frame t+k's target predicted from frame t's and the latent action
    latent: torch.Tensor  # (B, num_tokens, dim), quantized latent action
    indices: torch.Tensor | None  # (B, num_tokens) code ids, None for a continuous latent
    quantizer_loss: torch.Tensor


class ActionHead(nn.Module):
    """An MLP from the latent action (B, num_tokens, dim) to the true action, standardised with statistics
    saved with the weights (LAOM's supervision)."""

    def __init__(self, latent_size: int, hidden: int, action_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_size, hidden), nn.GELU(), nn.Linear(hidden, action_dim))
        self.register_buffer("action_mean", torch.zeros(action_dim))
        self.register_buffer("action_std", torch.ones(action_dim))

    def loss(self, latent: Tensor, action: Tensor, labelled: Tensor) -> Tensor:
        """Mean squared error of the standardised action over the ``labelled`` pairs alone (0 if none is)."""
        target = (action.float() - self.action_mean) / self.action_std
        error = (self.net(latent.flatten(1)).float() - target).pow(2).mean(1)
        weights = labelled.float()
        return (error * weights).sum() / weights.sum().clamp_min(1)


class LatentActionModel(nn.Module):
    """Encoder (both frames -> action tokens), quantizer, decoder (frame t's target + tokens -> frame t+k's),
    and with supervision an action head on the latent."""

    def __init__(
        self,
        encoder: nn.Module,
        quantizer: nn.Module,
        decoder: nn.Module,
        action_head: ActionHead | None = None,
    ):
        super().__init__()
        self.encoder, self.quantizer, self.decoder = encoder, quantizer, decoder
        self.action_head = action_head

    def forward(self, frame_t: Tensor, frame_tk: Tensor, context: Tensor | None = None) -> LAQOutput:
        """``context``: frame t's target where it is not frame t itself (features)."""
        quantized = self.quantizer(self.encoder(frame_t, frame_tk))
        reconstruction = self.decoder(frame_t if context is None else context, quantized.quantized)
        return LAQOutput(reconstruction, quantized.quantized, quantized.indices, quantized.loss)

    def codes(self, frame_t: torch.Tensor, frame_tk: torch.Tensor) -> torch.Tensor | None:
        """The latent action codes (B, num_tokens) of the transitions; None for a continuous latent."""
        return self.quantizer(self.encoder(frame_t, frame_tk)).indices


@STAGES.register_as("laq")
class LAQStage(Stage):
    Config = LAQConfig

    @classmethod
    def build_model(cls, spec: dict, action_dim: int = CHECK_ACTION_DIM) -> LatentActionModel:
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
            features=target_features(spec),
        )
        supervision = spec.get("supervision", NO_SUPERVISION)
        head = (
            ActionHead(tokens * dim, supervision["hidden"], action_dim) if supervision["fraction"] else None
        )
        return LatentActionModel(encoder, quantizer, decoder, head)

    @classmethod
    def check_model(cls, spec: dict) -> None:
        """A pretrained target's sizes come with its download: the dry build takes those of its ``config``
        (offline), which leaves every other size checked."""
        block = target_block(spec)
        if block.get("pretrained") is not None:
            decoder = {**spec["model"]["decoder"], "target": {**block, "pretrained": None}}
            spec = {**spec, "model": {**spec["model"], "decoder": decoder}}
        cls.build_model(spec)

    def __init__(self, spec: dict, device: torch.device, seed: int):
        data, supervision = spec["data"], spec["supervision"]
        self.data = FrameData(
            data_urls(data),
            data,
            spec["train"],
            seed,
            PROBE_TRAIN_PAIRS,
            label_fraction=supervision["fraction"],
        )
        if data["val_split"] == 0:
            logger.warning("data.val_split is 0: evaluating on training pairs")
        self.batch_size = self.data.micro_batch  # evaluation chunks, as in training
        self.device, self.seed = device, seed
        self.augment, self.supervision_weight = data["augment"], supervision["weight"]
        self.target = build_target(spec).to(device)
        self.model = self.build_model(spec, self.action_dim(supervision["fraction"])).to(device)
        if self.model.action_head is not None:
            actions = torch.from_numpy(self.data.probe["action"]).float()
            self.model.action_head.action_mean.copy_(actions.mean(0))
            self.model.action_head.action_std.copy_(actions.std(0).clamp_min(1e-6))
        self.val_codes: np.ndarray | None = None  # (N, num_tokens) of the latest evaluation, for draw()

    def action_dim(self, fraction: float) -> int:
        """The size of the data's actions, which a supervised head predicts (CHECK_ACTION_DIM without one)."""
        if not fraction:
            return CHECK_ACTION_DIM
        if "action" not in self.data.probe:
            raise SpecError(
                "supervision.fraction: the data has no actions to supervise the latent with; set it to 0, or "
                "use shards with actions"
            )
        return self.data.probe["action"].shape[1]

    def train_batch(self, index: int) -> dict[str, Any]:
        batch = to_float(self.data.train_batch(index), self.device)
        if self.augment is not None:
            seed = augment_seed(self.seed, index)
            batch["frame_t"], batch["frame_tk"] = augment_pairs(
                batch["frame_t"], batch["frame_tk"], self.augment, seed
            )
        return batch

    def train_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        context, target = self.target(batch["frame_t"]), self.target(batch["frame_tk"])
        out = self.model(batch["frame_t"], batch["frame_tk"], context)
        reconstruction_loss = F.mse_loss(out.reconstruction.float(), target.float())
        loss = reconstruction_loss + out.quantizer_loss
        logs = {
            "reconstruction_loss": reconstruction_loss.detach(),
            "quantizer_loss": out.quantizer_loss.detach(),
        }
        if self.model.action_head is not None:
            action_loss = self.model.action_head.loss(out.latent, batch["action"], batch["labelled"])
            loss = loss + self.supervision_weight * action_loss
            logs["action_loss"] = action_loss.detach()
        return loss, logs

    def evaluate(self) -> dict[str, float]:
        """Errors of the target against the copy baseline (frame t's target) on the held-out pairs, with PSNR
        of peak 1 for frames and, for features, of the mean square of the targets (their signal-to-noise
        ratio, which ranks checkpoints as the features' MSE does); code usage; action probes."""
        val = self.infer(self.data.val)
        mse, copy_mse = val["mse"], val["copy_mse"]
        peak = 1.0 if self.target.is_image else val["power"].mean().item()
        metrics = {
            "val_mse": mse.mean().item(),
            "val_psnr": psnr(mse, peak).item(),
            "copy_mse": copy_mse.mean().item(),
            "copy_psnr": psnr(copy_mse, peak).item(),
        }
        metrics["psnr_gain"] = metrics["val_psnr"] - metrics["copy_psnr"]
        metrics["latent_gain"] = metrics["val_psnr"] - psnr(val["shuffled_mse"], peak).item()
        if val["indices"] is not None:
            metrics.update(codebook_usage(val["indices"], self.model.quantizer.codebook_size))
            self.val_codes = val["indices"].cpu().numpy()
        if val["action"] is not None and "action" in self.data.probe:
            probe = self.infer(self.data.probe)
            tasks = self.data.val["instruction"]
            metrics.update(
                action_probes(
                    probe["latent"], probe["action"], val["latent"], val["action"], tasks, self.seed
                )
            )
        metrics["data/skipped_shards"] = float(len(self.data.skipped))
        return metrics

    def infer(self, pairs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
        """Run the model over held-out ``pairs`` in batches: per-pair errors of the target (also with the latent
        of the previous pair, which shows how much the latent carries), the target's mean square, latents, codes
        and true actions. The results do not depend on the batch size (so not on the number of ranks)."""
        keys = ("mse", "copy_mse", "power", "latent", "indices", "action")
        parts: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
        image = self.target.is_image
        for batch in self.chunks(pairs):
            context, target = self.target(batch["frame_t"]), self.target(batch["frame_tk"])
            out = self.model(batch["frame_t"], batch["frame_tk"], context)
            parts["mse"].append(per_sample_mse(out.reconstruction, target, image))
            parts["copy_mse"].append(per_sample_mse(context, target, image))
            parts["power"].append(target.float().pow(2).flatten(1).mean(1))
            parts["latent"].append(out.latent)
            if out.indices is not None:
                parts["indices"].append(out.indices)
            if "action" in batch:
                parts["action"].append(batch["action"])
        results = {key: torch.cat(values) if values else None for key, values in parts.items()}
        others = results["latent"].roll(1, dims=0).split(self.batch_size)
        shuffled = [
            per_sample_mse(
                self.model.decoder(self.target(batch["frame_t"]), latent),
                self.target(batch["frame_tk"]),
                image,
            )
            for batch, latent in zip(self.chunks(pairs), others, strict=True)
        ]
        return {**results, "shuffled_mse": torch.cat(shuffled), "latent": results["latent"].float()}

    def draw(self, folder: Path, prefix: str) -> list[Path]:
        """Pictures of the model on fixed held-out pairs (docs/PICTURES.md): the reconstruction; with codes, the
        latent action atlas, transitions of the most used codes and the code usage (of the held-out codes that
        the latest evaluate() kept). A feature target has no pictures of what the decoder predicts."""
        image = self.target.is_image
        paths = [self.draw_reconstruction(folder / f"{prefix}reconstruction.png")] if image else []
        if self.model.quantizer.codebook_size is None or self.val_codes is None:
            return paths
        codes = self.val_codes
        counts = code_counts(codes, self.model.quantizer.codebook_size)
        if image:
            paths.append(self.draw_atlas(folder / f"{prefix}atlas.png", codes, counts))
        return [
            *paths,
            self.draw_code_examples(folder / f"{prefix}code_examples.png", codes, counts),
            pictures.code_usage(folder / f"{prefix}code_usage.png", counts),
        ]

    def later_frame(self) -> str:
        """How pictures name frame t+k: "t+1", or "t+k" for several offsets."""
        offsets = self.data.data["offsets"]
        return f"t+{offsets[0]}" if len(offsets) == 1 else "t+k"

    def draw_reconstruction(self, path: Path) -> Path:
        val = self.data.val
        picks = spread(len(val["frame_t"]), RECONSTRUCTED_PAIRS)
        frame_t, frame_tk = val["frame_t"][picks], val["frame_tk"][picks]
        batch = to_float({"frame_t": frame_t, "frame_tk": frame_tk}, self.device)
        predicted = images(self.model(batch["frame_t"], batch["frame_tk"]).reconstruction)
        return pictures.reconstruction(path, frame_t, frame_tk, predicted, self.later_frame())

    def draw_atlas(self, path: Path, codes: np.ndarray, counts: np.ndarray) -> Path:
        """The atlas of the most used codes (``counts`` (K, C) over the held-out ``codes`` (N, K))."""
        # in code order: columns line up
        shown = np.sort(most_used(counts)[:ATLAS_TOKENS, :ATLAS_CODES], axis=1)
        picks = spread(len(codes), max(1, min(ATLAS_FRAMES, ATLAS_ROWS // len(shown))))
        frame_t = self.data.val["frame_t"][picks]
        changes = self.atlas_changes(frame_t, codes[picks], shown)
        size = counts.shape[1]
        which = f"the {shown.shape[1]} most used of {size}" if shown.shape[1] < size else f"all {size}"
        tokens = "" if len(shown) == len(counts) else f", the first {len(shown)} of {len(counts)} tokens"
        title = f"Latent action atlas: {which} codes of each token{tokens}"
        return pictures.atlas(path, frame_t, changes, shown, codes[picks], title)

    def draw_code_examples(self, path: Path, codes: np.ndarray, counts: np.ndarray) -> Path:
        val, ranked = self.data.val, most_used(counts)
        examples = [
            pictures.CodeExamples(
                j,
                int(code),
                counts[j, code] / len(codes),
                [(val["frame_t"][i], val["frame_tk"][i]) for i in examples_of(codes[:, j], code)],
            )
            for j in range(min(len(counts), EXAMPLE_TOKENS))
            for code in ranked[j, :EXAMPLE_CODES]
            if counts[j, code] > 0
        ]
        title = f"Held-out transitions (frame t | frame {self.later_frame()}) of the most used codes"
        return pictures.code_examples(path, examples, title)

    def atlas_changes(self, frame_t: np.ndarray, own: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """(F, J, C, H, W, 3): frames t (F, H, W, 3) decoded with token j set to ``codes[j, c]`` (J, C) and the
        other tokens at the pair's own codes ``own`` (F, num_tokens), minus frame t."""
        tokens, count = codes.shape
        indices = np.broadcast_to(own[:, None, None, :], (len(own), tokens, count, own.shape[1])).copy()
        rows, columns = np.arange(tokens)[:, None], np.arange(count)[None, :]
        indices[:, rows, columns, rows] = codes
        flat = torch.from_numpy(indices.reshape(-1, own.shape[1])).to(self.device)
        frames = {"frame_t": np.repeat(frame_t, tokens * count, axis=0)}
        decoded = [
            images(self.model.decoder(batch["frame_t"], self.model.quantizer.codes_to_latent(chosen)))
            for batch, chosen in zip(self.chunks(frames), flat.split(self.batch_size), strict=True)
        ]
        change = np.concatenate(decoded) - frames["frame_t"] / 255.0
        return change.reshape(len(own), tokens, count, *frame_t.shape[1:])

    def chunks(self, pairs: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """``pairs`` as float batches of ``batch_size`` on the device."""
        for start in range(0, len(pairs["frame_t"]), self.batch_size):
            chunk = {key: value[start : start + self.batch_size] for key, value in pairs.items()}
            yield to_float(chunk, self.device)


def most_used(counts: np.ndarray) -> np.ndarray:
    """(K, C) each token's codes, the most used first (ties in code order)."""
    return np.argsort(-counts, axis=1, kind="stable")


def spread(total: int, count: int) -> np.ndarray:
    """Up to ``count`` indices spread evenly over ``range(total)`` (held-out pairs of different scenes)."""
    return np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(int))


def examples_of(codes: np.ndarray, code: int) -> np.ndarray:
    """Up to ``EXAMPLES_PER_CODE`` indices of pairs assigned ``code``, spread over the held-out pairs."""
    assigned = np.flatnonzero(codes == code)
    return assigned[spread(len(assigned), EXAMPLES_PER_CODE)]


def images(frames: torch.Tensor) -> np.ndarray:
    """Float (B, 3, H, W) frames -> (B, H, W, 3) numpy in [0, 1]."""
    return frames.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


def target_block(spec: dict) -> dict:
    """The spec's ``model.decoder.target`` block."""
    return spec["model"]["decoder"].get("target", PIXELS)


def target_features(spec: dict) -> tuple[int, int] | None:
    """(tokens, size) of the spec's feature target, None for frames; without building the target."""
    block, key = target_block(spec), "model.decoder.target"
    config = TARGETS.config(block, key)
    return TARGETS.get(block["name"], f"{key}.name").feature_shape(config, spec["data"]["image_size"])


def build_target(spec: dict) -> nn.Module:
    """The frozen target the decoder predicts (kept beside the model: no optimizer, checkpoint or DDP sees it)."""
    target = TARGETS.build(target_block(spec), "model.decoder.target", image_size=spec["data"]["image_size"])
    return target.requires_grad_(False).eval()


def saved_action_dim(weights: Path) -> int:
    """The action size of a supervised LAQ's head in a weights file; CHECK_ACTION_DIM when it has none."""
    with safe_open(str(weights), framework="pt") as f:
        names = f.keys()  # a list: safe_open has no `in`
        return f.get_slice(ACTION_STATS).get_shape()[0] if ACTION_STATS in names else CHECK_ACTION_DIM


def load_laq(reference: RunReference, device: torch.device) -> LatentActionModel:
    """The LAQ model of a run with the referenced weights, in eval mode on ``device``."""
    spec = reference.spec()
    if spec["stage"] != "laq":
        raise SpecError(f"{reference.run_dir} is a {spec['stage']!r} run, not an LAQ run")
    model = LAQStage.build_model(spec, saved_action_dim(reference.weights)).to(device)
    load_model(model, str(reference.weights), device=str(device))
    return model.eval()


@torch.no_grad()
def label_episode(model: LatentActionModel, frames: np.ndarray, offset: int, batch_size: int) -> np.ndarray:
    """int64 (T - offset, num_tokens): the codes of every pair (t, t + offset) of an episode's frames."""
    device = next(model.parameters()).device
    starts = np.arange(len(frames) - offset)
    codes = []
    for chunk in np.array_split(starts, max(1, -(-len(starts) // batch_size))):
        pairs = {"frame_t": frames[chunk], "frame_tk": frames[chunk + offset]}
        batch = to_float(pairs, device)
        codes.append(model.codes(batch["frame_t"], batch["frame_tk"]).cpu().numpy())
    return np.concatenate(codes).astype(np.int64)
