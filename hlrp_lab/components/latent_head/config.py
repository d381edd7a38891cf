"""Latent head configs: the spec keys of each latent head (pydantic only, so that a spec is checked without
torch). A head's config also says, before any model exists, which tokens the tokenizer gets and what follows the
instruction in the prompt."""

from abc import abstractmethod

from pydantic import Field

from hlrp_lab.components.latent_head import LATENT_HEADS
from hlrp_lab.lib.registry import Strict


class LatentHeadConfig(Strict):
    """Keys every latent head has: the shape of the LAQ run's latent action."""

    num_tokens: int = Field(4, gt=0, description="Latent tokens per action: the LAQ quantizer's num_tokens.")
    codebook_size: int = Field(8, gt=1, description="Codes per token: the LAQ quantizer's codebook_size.")

    @abstractmethod
    def added_tokens(self) -> list[str]:
        """The special tokens added to the tokenizer (before the model is built; their embeddings train)."""

    @abstractmethod
    def prompt_suffix(self) -> str:
        """The text after the instruction in every prompt."""


@LATENT_HEADS.register_config("CodeQueries")
class CodeQueriesConfig(LatentHeadConfig):
    def query_tokens(self) -> list[str]:
        """The tokens appended to every prompt."""
        return [f"<latent_{i}>" for i in range(self.num_tokens)]

    def added_tokens(self) -> list[str]:
        return self.query_tokens()

    def prompt_suffix(self) -> str:
        return "".join(self.query_tokens())


@LATENT_HEADS.register_config("ActTokens")
class ActTokensConfig(LatentHeadConfig):
    def added_tokens(self) -> list[str]:
        """One token per code, ``<ACT_0>`` .. ``<ACT_{codebook_size-1}>``: the codes are decoded as tokens."""
        return [f"<ACT_{code}>" for code in range(self.codebook_size)]

    def prompt_suffix(self) -> str:
        """Nothing: the first code is predicted at the instruction's last token (the prompt's last position)."""
        return ""
