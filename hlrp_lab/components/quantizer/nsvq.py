"""Noise-substitution vector quantization (NSVQ, Vali & Bäckström 2022), the quantizer of LAPA's LAQ.

In training the decoder sees ``z + ||z - q|| * u`` with ``u`` a random unit vector: the quantization error is
simulated by noise of the same size, so gradients reach the encoder and the codebook without a
straight-through estimator. In evaluation the decoder sees the nearest code ``q`` itself. Codes unused for
``replace_every`` training steps are replaced by random encoder outputs of the current batch.

On several ranks the noise of each sample and the code restarts are those of one process at the same global
batch: the noise is this rank's rows of the whole batch's, usage is summed over ranks and restarts draw from
every rank's encoder outputs, so the replicas keep the same codebook.
"""

import torch
from torch import Tensor, nn

from hlrp_lab.components.quantizer import QUANTIZERS
from hlrp_lab.components.quantizer.base import QuantizerOutput
from hlrp_lab.components.quantizer.config import NSVQConfig
from hlrp_lab.lib.distributed import gather_rows, rank_slice_randn, sum_over_ranks


@QUANTIZERS.register
class NSVQ(nn.Module):
    """Nearest-code quantization trained with noise substitution; a learned codebook with dead-code restart."""

    Config = NSVQConfig

    def __init__(self, config: NSVQConfig):
        super().__init__()
        self.dim, self.num_tokens, self.codebook_size = (
            config.code_dim,
            config.num_tokens,
            config.codebook_size,
        )
        self.replace_every = config.replace_every
        self.codebook = nn.Parameter(
            torch.randn(config.codebook_size, config.code_dim) / config.code_dim**0.5
        )
        self.register_buffer("usage", torch.zeros(config.codebook_size))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def nearest(self, z: Tensor) -> Tensor:
        """Index of the nearest code of each vector of ``z`` (..., code_dim)."""
        return torch.cdist(z.flatten(0, -2), self.codebook).argmin(-1).view(z.shape[:-1])

    def codes_to_latent(self, indices: Tensor) -> Tensor:
        """Code ids (B, T) -> their codebook vectors (B, T, code_dim), as forward returns them in eval mode."""
        return self.codebook[indices]

    def forward(self, z: Tensor) -> QuantizerOutput:
        """(B, T, code_dim) -> latent (B, T, code_dim), indices (B, T), zero auxiliary loss."""
        indices = self.nearest(z.detach().float())
        hard = self.codebook[indices].to(z.dtype)
        if not self.training:
            return QuantizerOutput(hard, indices, z.new_zeros(()))
        noise = rank_slice_randn(z)
        error = (z - hard).norm(dim=-1, keepdim=True)
        latent = z + error * noise / noise.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self.track_usage(indices, z)
        return QuantizerOutput(latent, indices, z.new_zeros(()))

    @torch.no_grad()
    def track_usage(self, indices: Tensor, z: Tensor) -> None:
        counts = torch.bincount(indices.flatten(), minlength=self.codebook_size).to(self.usage.dtype)
        self.usage += sum_over_ranks(counts)
        self.steps += 1
        if self.replace_every and int(self.steps) % self.replace_every == 0:
            dead = (self.usage == 0).nonzero().flatten()
            if len(dead):
                candidates = gather_rows(z.detach()).flatten(0, -2)
                picks = torch.randint(len(candidates), (len(dead),), device=z.device)
                self.codebook[dead] = candidates[picks].to(self.codebook.dtype)
            self.usage.zero_()
