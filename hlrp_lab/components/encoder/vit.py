"""ViT encoder over both frames: joint attention, or LAPA's factorised spatio-temporal attention.

Joint (``temporal_depth`` 0): the patches of both frames (frame t+k's with an embedding of the pixel change
added) and learned action queries attend to each other in ``depth`` layers; the queries are the action.
Spatio-temporal (LAPA's LAQ): ``depth`` spatial layers attend within each frame, then ``temporal_depth``
temporal layers across the two frames at each patch position; the queries cross-attend to the change of the
patch tokens (frame t+k's minus frame t's).
"""

import torch
from einops import rearrange
from torch import Tensor, nn

from hlrp_lab.components.encoder import ENCODERS
from hlrp_lab.components.encoder.config import ViTEncoderConfig


def patch_grid(image_size: int, patch_size: int) -> int:
    """Patches per image side; a ValueError when ``patch_size`` does not divide ``image_size``."""
    if image_size % patch_size:
        raise ValueError(f"patch_size {patch_size} must divide image_size {image_size}")
    return image_size // patch_size


def learned_embedding(*shape: int) -> nn.Parameter:
    return nn.Parameter(nn.init.trunc_normal_(torch.empty(*shape), std=0.02))


@ENCODERS.register
class ViTEncoder(nn.Module):
    """(frame t, frame t+k) -> ``num_tokens`` latent action tokens of size ``out_dim``."""

    Config = ViTEncoderConfig

    def __init__(
        self, config: ViTEncoderConfig, *, image_size: int, channels: int, num_tokens: int, out_dim: int
    ):
        super().__init__()
        num_patches = patch_grid(image_size, config.patch_size) ** 2
        self.num_tokens = num_tokens
        self.factorized = config.temporal_depth > 0
        self.patch_embed = nn.Conv2d(channels, config.dim, config.patch_size, stride=config.patch_size)
        if not self.factorized:
            self.change_embed = nn.Conv2d(channels, config.dim, config.patch_size, stride=config.patch_size)
        self.position = learned_embedding(1, num_patches, config.dim)
        self.time = learned_embedding(2, 1, config.dim)  # frame t, frame t+k
        self.queries = learned_embedding(1, num_tokens, config.dim)
        layer = nn.TransformerEncoderLayer(**config.layer_kwargs())
        if self.factorized:
            self.spatial = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
            self.temporal = nn.TransformerEncoder(layer, config.temporal_depth, enable_nested_tensor=False)
            self.readout = nn.TransformerDecoderLayer(**config.layer_kwargs())
        else:
            self.transformer = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, out_dim)

    def forward(self, frame_t: Tensor, frame_tk: Tensor) -> Tensor:
        """Two (B, C, H, W) frames -> (B, num_tokens, out_dim)."""
        patches = self.frame_tokens(frame_t, frame_tk)
        queries = self.queries.expand(frame_t.shape[0], -1, -1)
        if self.factorized:
            tokens = self.across_frames(self.within_frames(patches))
            actions = self.readout(queries, tokens[:, 1] - tokens[:, 0])
        else:
            change = self.change_embed(frame_tk - frame_t).flatten(2).transpose(1, 2)
            patches = torch.stack([patches[:, 0], patches[:, 1] + change], dim=1)
            tokens = torch.cat([queries, rearrange(patches, "b t n d -> b (t n) d")], dim=1)
            actions = self.transformer(tokens)[:, : self.num_tokens]
        return self.head(self.norm(actions))

    def frame_tokens(self, frame_t: Tensor, frame_tk: Tensor) -> Tensor:
        """(B, 2, patches, dim): each frame's patch embeddings with their position and frame embeddings."""
        patches = self.patch_embed(torch.cat([frame_t, frame_tk])).flatten(2).transpose(1, 2) + self.position
        return rearrange(patches, "(t b) n d -> b t n d", t=2) + self.time

    def within_frames(self, tokens: Tensor) -> Tensor:
        """The spatial layers: the patches of each frame attend to each other, never to the other frame's."""
        frames = self.spatial(rearrange(tokens, "b t n d -> (b t) n d"))
        return rearrange(frames, "(b t) n d -> b t n d", t=tokens.shape[1])

    def across_frames(self, tokens: Tensor) -> Tensor:
        """The temporal layers: at each patch position, the two frames' tokens attend to each other."""
        positions = self.temporal(rearrange(tokens, "b t n d -> (b n) t d"))
        return rearrange(positions, "(b n) t d -> b t n d", n=tokens.shape[2])
