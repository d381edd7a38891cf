"""ViT decoder: patches of frame t cross-attend to the latent action tokens and predict frame t+k."""

import torch
from einops import rearrange
from torch import Tensor, nn

from hlrp_lab.components.decoder import DECODERS
from hlrp_lab.components.decoder.config import ViTDecoderConfig
from hlrp_lab.components.encoder.vit import learned_embedding, patch_grid


@DECODERS.register
class ViTDecoder(nn.Module):
    """(frame t, latent action tokens) -> predicted frame t+k, (B, C, H, W)."""

    Config = ViTDecoderConfig

    def __init__(
        self, config: ViTDecoderConfig, *, image_size: int, channels: int, latent_dim: int, num_tokens: int
    ):
        super().__init__()
        patch, dim = config.patch_size, config.dim
        self.grid, self.patch, self.predict_residual = (
            patch_grid(image_size, patch),
            patch,
            config.predict_residual,
        )
        self.patch_embed = nn.Conv2d(channels, dim, patch, stride=patch)
        self.position = learned_embedding(1, self.grid**2, dim)
        self.action_in = nn.Linear(latent_dim, dim)
        self.action_position = learned_embedding(1, num_tokens, dim)
        self.transformer = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(**config.layer_kwargs()), config.depth
        )
        self.norm = nn.LayerNorm(dim)
        self.to_pixels = nn.Linear(dim, channels * patch * patch)
        if self.predict_residual:  # the untrained decoder outputs frame t exactly
            nn.init.zeros_(self.to_pixels.weight)
            nn.init.zeros_(self.to_pixels.bias)

    def forward(self, frame_t: Tensor, latent: Tensor) -> Tensor:
        """Frame t (B, C, H, W) and latent (B, num_tokens, latent_dim) -> frame t+k (B, C, H, W)."""
        patches = self.patch_embed(frame_t).flatten(2).transpose(1, 2) + self.position
        actions = self.action_in(latent) + self.action_position
        pixels = self.to_pixels(self.norm(self.transformer(patches, actions)))
        image = rearrange(
            pixels, "b (h w) (c p q) -> b c (h p) (w q)", h=self.grid, p=self.patch, q=self.patch
        )
        return frame_t + image if self.predict_residual else torch.sigmoid(image)
