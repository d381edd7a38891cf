"""No quantization: a continuous latent action (the ablation of the bottleneck)."""

from torch import Tensor, nn

from hlrp_lab.components.quantizer import QUANTIZERS
from hlrp_lab.components.quantizer.base import QuantizerOutput
from hlrp_lab.components.quantizer.config import IdentityConfig


@QUANTIZERS.register
class Identity(nn.Module):
    """Passes the encoder's latent tokens through unchanged."""

    codebook_size = None

    Config = IdentityConfig

    def __init__(self, config: IdentityConfig):
        super().__init__()
        self.dim, self.num_tokens = config.dim, config.num_tokens

    def forward(self, x: Tensor) -> QuantizerOutput:
        """(B, T, dim) -> the same tensor, no indices, zero loss."""
        return QuantizerOutput(x, None, x.new_zeros(()))
