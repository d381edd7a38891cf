"""Latent head configs: the spec keys of each latent head (pydantic only, so that a spec is checked without
torch)."""

from pydantic import Field

from hlrp_lab.components.latent_head import LATENT_HEADS
from hlrp_lab.lib.registry import Strict


@LATENT_HEADS.register_config("CodeQueries")
class CodeQueriesConfig(Strict):
    num_tokens: int = Field(4, gt=0, description="Latent tokens per action: the LAQ quantizer's num_tokens.")
    codebook_size: int = Field(8, gt=1, description="Codes per token: the LAQ quantizer's codebook_size.")

    def query_tokens(self) -> list[str]:
        """The tokens appended to every prompt (added to the tokenizer before the model is built)."""
        return [f"<latent_{i}>" for i in range(self.num_tokens)]
