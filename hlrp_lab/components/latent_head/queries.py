"""Latent actions predicted by learned queries: K query tokens appended to the prompt, each one's last hidden
state mapped to logits over the codebook.

Against LAPA's way (``ActTokens``: new vocabulary tokens decoded one after another): all K codes come from one
forward pass with no autoregressive decoding, in training and evaluation alike, it works the same for every VLM
family, and the same K hidden states are the features the stage-3 action head reads.
"""

import torch
from torch import nn

from hlrp_lab.components.latent_head import LATENT_HEADS
from hlrp_lab.components.latent_head.base import Backbone, LatentHead
from hlrp_lab.components.latent_head.config import CodeQueriesConfig


@LATENT_HEADS.register
class CodeQueries(LatentHead):
    """K learned query tokens; LayerNorm + linear map of each one's last hidden state to codebook logits."""

    Config = CodeQueriesConfig

    def __init__(self, config: CodeQueriesConfig, *, hidden_size: int):
        super().__init__(config)
        self.norm = nn.LayerNorm(hidden_size)
        self.proj = nn.Linear(hidden_size, config.codebook_size)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """(B, K, hidden) last hidden states of the queries -> (B, K, codebook_size) logits."""
        return self.proj(self.norm(states))

    def query_states(self, backbone: Backbone, frames: torch.Tensor, instructions: list[str]) -> torch.Tensor:
        """The last hidden states of the K query tokens that end the prompt: one pass."""
        ids, mask = backbone.encode(instructions, self.suffix)
        return backbone(frames, ids, mask)[:, -self.num_tokens :]
