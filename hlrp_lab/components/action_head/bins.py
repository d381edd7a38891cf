"""Discrete action bins: each action value is classified into one of ``bins`` uniform bins (OpenVLA, LAPA)."""

from torch import Tensor, nn
from torch.nn import functional as F

from hlrp_lab.components.action_head import ACTION_HEADS
from hlrp_lab.components.action_head.base import ActionHead, mlp
from hlrp_lab.components.action_head.config import DiscreteBinsConfig


@ACTION_HEADS.register
class DiscreteBins(ActionHead):
    """Cross-entropy over uniform bins of [-1, 1] per action value; predicts the argmax bin's centre.

    The action tokenisation of OpenVLA (Kim et al. 2024) and LAPA (Ye et al. 2024), as a separate head.
    """

    Config = DiscreteBinsConfig

    def __init__(self, config: DiscreteBinsConfig, *, feature_dim: int, action_dim: int, chunk: int):
        super().__init__(config, feature_dim=feature_dim, action_dim=action_dim, chunk=chunk)
        self.bins = config.bins
        out_dim = chunk * action_dim * config.bins
        if config.hidden is None:
            self.net = nn.Linear(feature_dim, out_dim)
        else:
            self.net = mlp(feature_dim, config.hidden, 1, out_dim)

    def to_bins(self, actions: Tensor) -> Tensor:
        """Values in [-1, 1] -> int64 bin indices in [0, bins)."""
        return ((actions.float() + 1) / 2 * self.bins).floor().clamp(0, self.bins - 1).long()

    def from_bins(self, indices: Tensor) -> Tensor:
        """Bin indices -> the bins' centres, float32."""
        return (indices.float() + 0.5) * (2 / self.bins) - 1

    def logits(self, features: Tensor) -> Tensor:
        """(B, feature_dim) -> (B, chunk, action_dim, bins)."""
        return self.net(features).unflatten(1, (self.chunk, self.action_dim, self.bins))

    def loss(self, features: Tensor, actions: Tensor) -> Tensor:
        return F.cross_entropy(self.logits(features).float().flatten(0, 2), self.to_bins(actions).flatten())

    def predict(self, features: Tensor) -> Tensor:
        return self.from_bins(self.logits(features).argmax(-1))
