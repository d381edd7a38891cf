"""Quantizer configs: the spec keys of each quantizer (pydantic only, so that a spec is checked without torch).

Every config tells the sizes of the latent it makes (``latent_dim``, ``num_tokens``, ``codebook_size``), so
that a stage wires the encoder and decoder, and a labelling run learns the code sizes, without a model.
"""

import math
from typing import Annotated

from pydantic import Field, PositiveInt

from hlrp_lab.components.quantizer import QUANTIZERS
from hlrp_lab.lib.registry import Strict


class CodebookConfig(Strict):
    """A learned codebook of ``codebook_size`` vectors of size ``code_dim``."""

    codebook_size: PositiveInt = Field(8, description="Number of codebook vectors (distinct latent actions).")
    code_dim: PositiveInt = Field(32, description="Size of each codebook vector and of each latent token.")
    num_tokens: PositiveInt = Field(4, description="Latent action tokens per transition.")

    @property
    def latent_dim(self) -> int:
        return self.code_dim

    @property
    def codes(self) -> int | None:
        return self.codebook_size


@QUANTIZERS.register_config("VectorQuantizer")
class VectorQuantizerConfig(CodebookConfig):
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


@QUANTIZERS.register_config("NSVQ")
class NSVQConfig(CodebookConfig):
    replace_every: int = Field(
        100, ge=0, description="Training steps between replacements of unused codes; 0 disables."
    )


@QUANTIZERS.register_config("FSQ")
class FSQConfig(Strict):
    levels: list[Annotated[int, Field(ge=2)]] = Field(
        [8, 5, 5, 5],
        min_length=1,
        description="Quantization levels per channel: the token size is their count, "
        "the codebook size their product.",
    )
    num_tokens: PositiveInt = Field(4, description="Latent action tokens per transition.")

    @property
    def latent_dim(self) -> int:
        return len(self.levels)

    @property
    def codes(self) -> int | None:
        return math.prod(self.levels)


@QUANTIZERS.register_config("Identity")
class IdentityConfig(Strict):
    dim: PositiveInt = Field(32, description="Size of each continuous latent token.")
    num_tokens: PositiveInt = Field(4, description="Latent action tokens per transition.")

    @property
    def latent_dim(self) -> int:
        return self.dim

    @property
    def codes(self) -> int | None:
        """A continuous latent has no codes."""
        return None
