"""What every quantizer returns."""

from typing import NamedTuple

from torch import Tensor


class QuantizerOutput(NamedTuple):
    """A quantizer's output; quantizers also expose ``dim``, ``num_tokens`` and ``codebook_size`` (None for a
    continuous latent). A quantizer with codes also has ``codes_to_latent(indices (B, T)) -> (B, T, dim)``: the
    latent its forward returns in eval mode for those codes (to decode a chosen latent action)."""

    quantized: Tensor  # (B, T, dim)
    indices: Tensor | None  # (B, T) int64 code ids, None for a continuous latent
    loss: Tensor  # scalar auxiliary loss, zero when there is none
