"""ViT decoder: tokens of frame t cross-attend to the latent action tokens and predict frame t+k's target.

The target is frame t+k itself (frame t's patches in, pixels out) or, given ``features`` (tokens, size), the
frozen features of frame t+k (frame t's features in, features out; ``components/target``).
"""

import torch
from einops import rearrange
from torch import Tensor, nn

from hlrp_lab.components.decoder import DECODERS
from hlrp_lab.components.decoder.config import ViTDecoderConfig
from hlrp_lab.components.encoder.vit import learned_embedding, patch_grid


@DECODERS.register
class ViTDecoder(nn.Module):
    """(frame t's target, latent action tokens) -> frame t+k's: (B, C, H, W) frames, or (B, tokens, size)."""

    Config = ViTDecoderConfig

    def __init__(
        self,
        config: ViTDecoderConfig,
        *,
        image_size: int,
        channels: int,
        latent_dim: int,
        num_tokens: int,
        features: tuple[int, int] | None = None,
    ):
        super().__init__()
        patch, dim = config.patch_size, config.dim
        self.patch, self.predict_residual = patch, config.predict_residual
        self.features = features is not None
        if features is None:  # patch_size applies to pixels only
            self.grid = patch_grid(image_size, patch)
            self.patch_embed = nn.Conv2d(channels, dim, patch, stride=patch)
            tokens, out_dim = self.grid**2, channels * patch * patch
        else:
            tokens, out_dim = features
            self.feature_in = nn.Linear(out_dim, dim)
        self.position = learned_embedding(1, tokens, dim)
        self.action_in = nn.Linear(latent_dim, dim)
        self.action_position = learned_embedding(1, num_tokens, dim)
        self.transformer = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(**config.layer_kwargs()), config.depth
        )
        self.norm = nn.LayerNorm(dim)
        out = nn.Linear(dim, out_dim)
        if self.predict_residual:  # the untrained decoder outputs frame t's target exactly
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
        if features is None:
            self.to_pixels = out
        else:
            self.to_features = out

    def forward(self, context: Tensor, latent: Tensor) -> Tensor:
        """Frame t (B, C, H, W), or its features (B, tokens, size), and the latent (B, num_tokens, latent_dim)
        -> frame t+k's, of the same shape."""
        actions = self.action_in(latent) + self.action_position
        if self.features:
            tokens = self.feature_in(context) + self.position
            change = self.to_features(self.norm(self.transformer(tokens, actions)))
            return context + change if self.predict_residual else change
        patches = self.patch_embed(context).flatten(2).transpose(1, 2) + self.position
        pixels = self.to_pixels(self.norm(self.transformer(patches, actions)))
        image = rearrange(
            pixels, "b (h w) (c p q) -> b c (h p) (w q)", h=self.grid, p=self.patch, q=self.patch
        )
        return context + image if self.predict_residual else torch.sigmoid(image)
