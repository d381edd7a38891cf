"""Vector quantization with an EMA codebook and dead-code restart (the VQ-VAE bottleneck of LAPA's LAQ)."""

from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import Tensor, nn
from vector_quantize_pytorch import VectorQuantize

from hlrp_lab.components.quantizer.base import QuantizerOutput
from hlrp_lab.components.registry import QUANTIZERS


@QUANTIZERS.register
class VectorQuantizer(nn.Module):
    """Each latent action token snaps to its nearest codebook vector (straight-through gradients)."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        codebook_size: PositiveInt = Field(
            8, description="Number of codebook vectors (distinct latent actions)."
        )
        code_dim: PositiveInt = Field(
            32, description="Size of each codebook vector and of each latent token."
        )
        num_tokens: PositiveInt = Field(4, description="Latent action tokens per transition.")
        decay: float = Field(0.99, gt=0, lt=1, description="EMA decay of the codebook updates.")
        commitment_weight: float = Field(
            0.25, ge=0, description="Weight of the commitment loss pulling encoder outputs to their codes."
        )
        dead_code_threshold: float = Field(
            2.0,
            ge=0,
            description="Codes whose EMA usage count falls below this are re-initialised from the batch; "
            "0 disables.",
        )
        kmeans_init: bool = Field(False, description="Initialise the codebook by k-means on the first batch.")

    def __init__(self, config: Config):
        super().__init__()
        self.dim, self.num_tokens, self.codebook_size = (
            config.code_dim,
            config.num_tokens,
            config.codebook_size,
        )
        self.vq = VectorQuantize(
            dim=config.code_dim,
            codebook_size=config.codebook_size,
            decay=config.decay,
            commitment_weight=config.commitment_weight,
            threshold_ema_dead_code=config.dead_code_threshold,
            kmeans_init=config.kmeans_init,
        )

    def forward(self, x: Tensor) -> QuantizerOutput:
        """(B, T, code_dim) -> quantized (B, T, code_dim), indices (B, T), commitment loss (training only)."""
        quantized, indices, loss = self.vq(x)
        return QuantizerOutput(quantized, indices, loss)
