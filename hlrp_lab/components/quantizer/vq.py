"""Vector quantization with an EMA codebook and dead-code restart (the VQ-VAE bottleneck of LAPA's LAQ)."""

from torch import Tensor, nn
from vector_quantize_pytorch import VectorQuantize

from hlrp_lab.components.quantizer import QUANTIZERS
from hlrp_lab.components.quantizer.base import QuantizerOutput
from hlrp_lab.components.quantizer.config import VectorQuantizerConfig


@QUANTIZERS.register
class VectorQuantizer(nn.Module):
    """Each latent action token snaps to its nearest codebook vector (straight-through gradients)."""

    Config = VectorQuantizerConfig

    def __init__(self, config: VectorQuantizerConfig):
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

    def codes_to_latent(self, indices: Tensor) -> Tensor:
        """Code ids (B, T) -> their codebook vectors (B, T, code_dim), as forward returns them in eval mode."""
        return self.vq.get_output_from_indices(indices)
