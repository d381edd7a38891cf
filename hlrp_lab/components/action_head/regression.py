"""Direct regression of the action chunk with an MLP."""

from torch import Tensor
from torch.nn import functional as F

from hlrp_lab.components.action_head import ACTION_HEADS
from hlrp_lab.components.action_head.base import ActionHead, mlp
from hlrp_lab.components.action_head.config import MLPRegressionConfig


@ACTION_HEADS.register
class MLPRegression(ActionHead):
    """An MLP from features to the whole action chunk, trained with an L1 or MSE loss.

    The continuous baseline of OpenVLA-OFT (Kim et al. 2025), which found L1 regression on action chunks
    as good as diffusion and faster.
    """

    Config = MLPRegressionConfig

    def __init__(self, config: MLPRegressionConfig, *, feature_dim: int, action_dim: int, chunk: int):
        super().__init__(config, feature_dim=feature_dim, action_dim=action_dim, chunk=chunk)
        self.net = mlp(feature_dim, config.hidden, config.layers, chunk * action_dim)
        self.loss_fn = F.l1_loss if config.loss == "l1" else F.mse_loss

    def forward(self, features: Tensor) -> Tensor:
        """(B, feature_dim) -> unclamped (B, chunk, action_dim), float32."""
        return self.net(features).float().unflatten(1, (self.chunk, self.action_dim))

    def loss(self, features: Tensor, actions: Tensor) -> Tensor:
        return self.loss_fn(self(features), actions.float())

    def predict(self, features: Tensor) -> Tensor:
        return self(features).clamp(-1, 1)
