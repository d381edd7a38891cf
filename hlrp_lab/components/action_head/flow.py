"""Flow matching: action chunks generated from noise by integrating a learned velocity field."""

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from hlrp_lab.components.action_head import ACTION_HEADS
from hlrp_lab.components.action_head.base import ActionHead, mlp
from hlrp_lab.components.action_head.config import FlowMatchingConfig

PREDICT_SEED = 0  # the noise that predict starts from, so that evaluation is reproducible


def time_embedding(tau: Tensor, dim: int) -> Tensor:
    """(B,) times in [0, 1] -> (B, dim) sines and cosines with periods from 4e-3 to 4, as in pi0."""
    periods = 4e-3 * 1000 ** torch.linspace(0, 1, dim // 2, device=tau.device)
    angles = 2 * math.pi * tau[:, None] / periods
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


@ACTION_HEADS.register
class FlowMatching(ActionHead):
    """An MLP velocity field v(x_tau, tau, features) carrying Gaussian noise (tau = 0) to the chunk (tau = 1).

    The action expert of pi0 (Black et al. 2024, arXiv:2410.24164), as an MLP: x_tau = tau a + (1 - tau) eps,
    target velocity a - eps, MSE loss; ``predict`` takes ``steps`` Euler steps from fixed-seed noise.
    """

    Config = FlowMatchingConfig

    def __init__(self, config: FlowMatchingConfig, *, feature_dim: int, action_dim: int, chunk: int):
        super().__init__(config, feature_dim=feature_dim, action_dim=action_dim, chunk=chunk)
        size = chunk * action_dim
        self.net = mlp(size + config.time_dim + feature_dim, config.hidden, config.layers, size)

    def velocity(self, x: Tensor, tau: Tensor, features: Tensor) -> Tensor:
        """Flat noisy chunks (B, chunk * action_dim), times (B,), features -> velocities, float32."""
        inputs = [x, time_embedding(tau, self.config.time_dim), features.to(x.dtype)]
        return self.net(torch.cat(inputs, dim=-1)).float()

    def loss(self, features: Tensor, actions: Tensor) -> Tensor:
        target = actions.float().flatten(1)
        noise = torch.randn_like(target)
        uniform = torch.rand(len(target), device=target.device)
        # Beta(1.5, 1) has CDF b^1.5, so U^(2/3) samples it.
        tau = 0.999 * (1 - uniform ** (2 / 3)) if self.config.time_sampling == "beta" else uniform
        x = tau[:, None] * target + (1 - tau[:, None]) * noise
        return F.mse_loss(self.velocity(x, tau, features), target - noise)

    def predict(self, features: Tensor) -> Tensor:
        generator = torch.Generator(device=features.device).manual_seed(PREDICT_SEED)
        size = (len(features), self.chunk * self.action_dim)
        x = torch.randn(size, generator=generator, device=features.device)
        dt = 1 / self.config.steps
        for step in range(self.config.steps):
            tau = torch.full((len(features),), step * dt, device=features.device)
            x = x + dt * self.velocity(x, tau, features)
        return x.clamp(-1, 1).unflatten(1, (self.chunk, self.action_dim))
