"""No quantization: a continuous latent action (the ablation of the bottleneck)."""

from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import Tensor, nn

from hlrp_lab.components.quantizer.base import QuantizerOutput
from hlrp_lab.components.registry import QUANTIZERS


@QUANTIZERS.register
class Identity(nn.Module):
    """Passes the encoder's latent tokens through unchanged."""

    codebook_size = None

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        dim: PositiveInt = Field(32, description="Size of each continuous latent token.")
        num_tokens: PositiveInt = Field(4, description="Latent action tokens per transition.")

    def __init__(self, config: Config):
        super().__init__()
        self.dim, self.num_tokens = config.dim, config.num_tokens

    def forward(self, x: Tensor) -> QuantizerOutput:
        """(B, T, dim) -> the same tensor, no indices, zero loss."""
        return QuantizerOutput(x, None, x.new_zeros(()))
