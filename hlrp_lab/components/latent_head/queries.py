"""Latent actions predicted by learned queries: K query tokens appended to the prompt, each one's last hidden
state mapped to logits over the codebook.

Chosen over LAPA's way (new vocabulary tokens decoded one after another by the language-model head): all K
codes come from one forward pass with no autoregressive decoding, it works the same for every VLM family
(only new tokens, no use of the family's LM head), and the same K hidden states are the features the stage-3
action head reads. LAPA's way fits in as another ``latent_head`` component.
"""

import torch
from torch import nn

from hlrp_lab.components.latent_head import LATENT_HEADS
from hlrp_lab.components.latent_head.config import CodeQueriesConfig


@LATENT_HEADS.register
class CodeQueries(nn.Module):
    """K learned query tokens; LayerNorm + linear map of each one's last hidden state to codebook logits."""

    Config = CodeQueriesConfig

    def __init__(self, config: CodeQueriesConfig, *, hidden_size: int):
        super().__init__()
        self.num_tokens, self.codebook_size = config.num_tokens, config.codebook_size
        self.norm = nn.LayerNorm(hidden_size)
        self.proj = nn.Linear(hidden_size, config.codebook_size)

    def forward(self, query_states: torch.Tensor) -> torch.Tensor:
        """(B, K, hidden) last hidden states of the queries -> (B, K, codebook_size) logits."""
        return self.proj(self.norm(query_states))
