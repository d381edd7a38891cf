"""What every quantizer returns."""

from typing import NamedTuple

from torch import Tensor


class QuantizerOutput(NamedTuple):
    """A quantizer's output; quantizers also expose ``dim``, ``num_tokens`` and ``codebook_size``."""

    quantized: Tensor  # (B, T, dim)
    indices: Tensor | None  # (B, T) int64 code ids, None for a continuous latent
    loss: Tensor  # scalar auxiliary loss, zero when there is none
