"""Frozen DINOv2 patch features as the target (UniVLA's): the decoder predicts the features of frame t+k from
those of frame t and the latent action, so the latent need not explain pixels the features ignore.

``pretrained`` loads real weights (a hub id or a local directory); without it a small ``Dinov2Config`` is
built and initialised with a fixed seed, so that every session, resume and evaluation sees the same features.
"""

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from transformers import Dinov2Config, Dinov2Model

from hlrp_lab.components.target import TARGETS
from hlrp_lab.components.target.config import DINOv2FeaturesConfig
from hlrp_lab.lib.errors import SpecError

KEY = "model.decoder.target"
SMALL_CONFIG = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "patch_size": 8,
}
INIT_SEED = 0
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # DINOv2's input normalisation


def architecture(config: DINOv2FeaturesConfig, side: int) -> Dinov2Config:
    """The Dinov2Config of ``config``: the pretrained model's (its config.json), or the small one."""
    if config.pretrained is None:
        return Dinov2Config(**{**SMALL_CONFIG, "image_size": side, **config.config})
    return from_hub(Dinov2Config, config)


def from_hub(cls: type, config: DINOv2FeaturesConfig) -> Dinov2Config | Dinov2Model:
    """``cls.from_pretrained`` of ``config.pretrained``; one line naming the key when it cannot be loaded."""
    name = config.pretrained
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().is_dir():
        raise SpecError(f"{KEY}.pretrained: {name} is not a directory")
    kwargs = {"dtype": torch.float32} if cls is Dinov2Model else {}
    try:
        return cls.from_pretrained(name, revision=config.revision, **kwargs)
    except OSError as err:
        raise SpecError(
            f"{KEY}.pretrained: cannot load {name!r} ({str(err).splitlines()[0]}); give a hub id this machine "
            "can download, or a local save_pretrained directory"
        ) from None


def input_side(config: DINOv2FeaturesConfig, image_size: int, patch_size: int) -> int:
    """The side frames are resized to; it must split into whole patches."""
    side = config.image_size or image_size
    if side % patch_size:
        fit = -(-side // patch_size) * patch_size
        raise SpecError(
            f"{KEY}.image_size: {side} px frames do not split into the model's {patch_size} px patches; "
            f"pass e.g. -s {KEY}.image_size={fit}"
        )
    return side


@TARGETS.register
class DINOv2Features(nn.Module):
    """Patch tokens (B, (side / patch)², hidden_size) of a frozen DINOv2, after its final layer norm."""

    Config = DINOv2FeaturesConfig
    is_image = False

    def __init__(self, config: DINOv2FeaturesConfig, *, image_size: int):
        super().__init__()
        model_config = architecture(config, config.image_size or image_size)
        self.side = input_side(config, image_size, model_config.patch_size)
        if config.pretrained is not None:
            self.model = from_hub(Dinov2Model, config)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(INIT_SEED)
                self.model = Dinov2Model(model_config)
        self.model.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval()

    @classmethod
    def feature_shape(cls, config: DINOv2FeaturesConfig, image_size: int) -> tuple[int, int]:
        """(tokens, feature size) of the features of ``image_size`` px frames, without building the model."""
        model_config = architecture(config, config.image_size or image_size)
        side = input_side(config, image_size, model_config.patch_size)
        return (side // model_config.patch_size) ** 2, model_config.hidden_size

    def train(self, mode: bool = True) -> "DINOv2Features":
        """Always in eval mode: the target is frozen."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, frames: Tensor) -> Tensor:
        """Frames (B, 3, H, W) in [0, 1] -> patch features (B, tokens, hidden_size)."""
        if frames.shape[-1] != self.side:
            frames = F.interpolate(
                frames, size=self.side, mode="bilinear", antialias=True, align_corners=False
            )
        pixels = (frames - self.mean) / self.std
        return self.model(pixel_values=pixels).last_hidden_state[:, 1:]
