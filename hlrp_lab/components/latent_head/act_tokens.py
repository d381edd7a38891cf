"""Latent actions as tokens, LAPA's way: each code i is a new token ``<ACT_i>`` of the VLM's vocabulary and the K
codes are decoded one after another after the prompt (github.com/LatentActionPretraining/LAPA).

Training is teacher-forced: one pass over the prompt followed by the true codes' tokens, cross-entropy on the K
next-code predictions (at the prompt's last token and at the first K-1 code tokens; the last code's token
predicts nothing, so it is left out). Evaluation decodes greedily: K passes, each appending the most likely code.

The codes' logits come from a linear map of the hidden state to the C codes, the rows of an output layer
restricted to the ACT tokens, as LAPA's ``delta_head`` (its own output layer of ``delta_vocab_size`` codes beside
the language-model head). So the family's language-model head stays frozen and unused (``freeze_unused_lm_head``),
a 7B model's 150k-row head needs no gradient or optimizer state, LoRA and FSDP need nothing special, and greedy
decoding can only produce codes. The ACT tokens' input embeddings are new rows of the backbone's embedding table
(LoRA trains those rows, as it does the queries of ``CodeQueries``).

``query_states`` (what stage 3's action head reads) are the K hidden states that predict the K codes in greedy
decoding: at the prompt's last token and at the first K-1 decoded codes' tokens; their ``forward`` is exactly
the evaluation logits. K passes: K-1 without gradient choose the codes, the last one (with gradient) gives all K
states, since attention is causal.
"""

import torch
from torch import nn

from hlrp_lab.components.latent_head import LATENT_HEADS
from hlrp_lab.components.latent_head.base import Backbone, LatentHead
from hlrp_lab.components.latent_head.config import ActTokensConfig


@LATENT_HEADS.register
class ActTokens(LatentHead):
    """LAPA: codes are new tokens <ACT_i> decoded after the prompt (teacher-forced in training, greedy at eval)."""

    Config = ActTokensConfig
    teacher_forced = True

    def __init__(self, config: ActTokensConfig, *, hidden_size: int):
        super().__init__(config)
        self.tokens = config.added_tokens()
        self.proj = nn.Linear(hidden_size, config.codebook_size, bias=False)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """(B, K, hidden) hidden states -> (B, K, codebook_size) logits of the next code."""
        return self.proj(states)

    def states_after(
        self, backbone: Backbone, frames: torch.Tensor, instructions: list[str], codes: torch.Tensor
    ) -> torch.Tensor:
        """(B, n + 1, hidden): the last hidden states of the prompt followed by the tokens of ``codes`` (B, n),
        those that predict codes 0 .. n."""
        ids, mask = backbone.encode(instructions, self.suffix)
        token_ids = torch.tensor(backbone.tokenizer.convert_tokens_to_ids(self.tokens), device=ids.device)
        ids = torch.cat([ids, token_ids[codes]], 1)
        mask = torch.cat([mask, torch.ones_like(codes, dtype=mask.dtype)], 1)
        return backbone(frames, ids, mask)[:, -(codes.shape[1] + 1) :]

    def query_states(self, backbone: Backbone, frames: torch.Tensor, instructions: list[str]) -> torch.Tensor:
        """The K hidden states of greedy decoding that predict the K codes."""
        codes = torch.zeros(len(frames), 0, dtype=torch.long, device=frames.device)
        with torch.no_grad():
            for _ in range(self.num_tokens - 1):
                last = self.states_after(backbone, frames, instructions, codes)[:, -1]
                codes = torch.cat([codes, self(last.float()).argmax(-1, keepdim=True)], 1)
        return self.states_after(backbone, frames, instructions, codes)

    def logits(
        self,
        backbone: Backbone,
        frames: torch.Tensor,
        instructions: list[str],
        codes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced logits with the true ``codes`` (one pass), greedy ones without (K passes)."""
        if codes is None:
            return super().logits(backbone, frames, instructions)
        return self(self.states_after(backbone, frames, instructions, codes[:, :-1]).float())
