"""Latent actions predicted by learned queries: K query tokens appended to the prompt, each one's last hidden
state mapped to logits over the codebook.

Chosen over LAPA's way (new vocabulary tokens decoded one after another by the language-model head): all K
codes come from one forward pass with no autoregressive decoding, it works the same for every VLM family
(only new tokens, no use of the family's LM head), and the same K hidden states are the features the stage-3
action head reads. LAPA's way fits in as another ``latent_head`` component.
"""

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hlrp_lab.components.registry import LATENT_HEADS


class CodeQueriesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_tokens: int = Field(4, gt=0, description="Latent tokens per action: the LAQ quantizer's num_tokens.")
    codebook_size: int = Field(8, gt=1, description="Codes per token: the LAQ quantizer's codebook_size.")


@LATENT_HEADS.register
class CodeQueries(nn.Module):
    """K learned query tokens; LayerNorm + linear map of each one's last hidden state to codebook logits."""

    Config = CodeQueriesConfig

    def __init__(self, config: CodeQueriesConfig, *, hidden_size: int):
        super().__init__()
        self.num_tokens, self.codebook_size = config.num_tokens, config.codebook_size
        self.norm = nn.LayerNorm(hidden_size)
        self.proj = nn.Linear(hidden_size, config.codebook_size)

    @staticmethod
    def query_tokens(config: CodeQueriesConfig) -> list[str]:
        """The tokens appended to every prompt (added to the tokenizer before the model is built)."""
        return [f"<latent_{i}>" for i in range(config.num_tokens)]

    def forward(self, query_states: torch.Tensor) -> torch.Tensor:
        """(B, K, hidden) last hidden states of the queries -> (B, K, codebook_size) logits."""
        return self.proj(self.norm(query_states))
