"""Stage 2, foundation: a VLA predicts the LAQ latent action of frame t from the frame and the instruction.

Data: shards labelled with an LAQ run's codes (``hlrp-lab data label``, or a ``label`` data source generated
and cached on first use). Metrics on held-out scenes: per-token accuracy, top-3 accuracy (the LAQ code among the
three highest scored) and whole-action exact match, against the majority baseline (the most frequent code of
each token, and the most frequent whole action, among training pairs).

The latent head decides how the codes are predicted (``model.latent_head``): ``CodeQueries`` in one pass from
learned queries, ``ActTokens`` as tokens decoded one after another (teacher-forced on the true codes in
training, greedy in evaluation, so the held-out metrics score what the model decodes by itself).
"""

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loguru import logger
from torch.nn import functional as F
from transformers import PreTrainedTokenizerBase

from hlrp_lab.data.dataset import data_urls
from hlrp_lab.data.loader import FrameData
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.stages import STAGES, pictures
from hlrp_lab.stages.config import FoundationConfig
from hlrp_lab.stages.metrics import code_counts, confusion_matrices, true_code_ranks
from hlrp_lab.stages.vla import (
    LatentActionVLA,
    VLAStage,
    build_vla,
    in_batches,
    labels_of,
    placeholder_tokenizer,
    prepare_tokenizer,
    run_tokenizer,
)

MAJORITY_PAIRS = 4096  # training pairs the majority baseline is counted on
TOP_K = 3  # val_top3_acc: one name for every codebook size (1 where it has at most 3 codes)


def check_labels(spec: dict, urls: list[str]) -> dict:
    """The labels of the data, which must fit ``data.offsets`` and the latent head; returns them."""
    labels = labels_of(urls)
    if not labels:
        raise SpecError(
            "data: these shards have no latent actions; label them with `hlrp-lab data label LAQ_RUN SHARDS "
            'OUT_DIR`, or name a {"name": "label", "laq": ...} data.source'
        )
    if spec["data"]["offsets"] != [labels["offset"]]:
        raise SpecError(
            f"data.offsets: the codes label pairs (t, t+{labels['offset']}); pass -s data.offsets=[{labels['offset']}]"
        )
    head = spec["model"]["latent_head"]
    for key in ("num_tokens", "codebook_size"):
        if head.get(key) != labels[key]:
            raise SpecError(
                f"model.latent_head.{key}: {head.get(key)}, but the LAQ run {labels['laq_spec']} has "
                f"{labels[key]}; pass -s model.latent_head.{key}={labels[key]}"
            )
    return labels


def majority_baseline(train_codes: np.ndarray, val_codes: np.ndarray) -> dict[str, float]:
    """Accuracies of always predicting the training pairs' most frequent code per token and whole action."""
    per_token = np.array([np.bincount(column).argmax() for column in train_codes.T])
    whole = np.array(Counter(map(tuple, train_codes.tolist())).most_common(1)[0][0])
    return {
        "majority_token_acc": float((val_codes == per_token).mean()),
        "majority_exact_match": float((val_codes == whole).all(1).mean()),
    }


@STAGES.register_as("foundation")
class FoundationStage(VLAStage):
    Config = FoundationConfig
    target = "codes"

    @classmethod
    def prepare_data(cls, spec: dict) -> list[str]:
        urls = super().prepare_data(spec)
        check_labels(spec, urls)
        return urls

    @classmethod
    def prepare(cls, spec: dict) -> None:
        prepare_tokenizer(spec, data_urls(spec["data"]))

    @classmethod
    def build_model(cls, spec: dict, tokenizer: PreTrainedTokenizerBase | None = None) -> LatentActionVLA:
        return build_vla(spec, tokenizer or placeholder_tokenizer(spec))

    def __init__(self, spec: dict, device: torch.device, seed: int):
        data = spec["data"]
        urls = data_urls(data)
        self.labels = check_labels(spec, urls)
        self.data = FrameData(urls, data, spec["train"], seed, MAJORITY_PAIRS, probe_keys=("codes",))
        self.batch_size, self.device = self.data.micro_batch, device  # evaluation chunks, as in training
        self.model = self.build_model(spec, run_tokenizer(spec)).to(device)
        self.baseline = majority_baseline(self.data.probe["codes"], self.data.val["codes"])
        self.val_predicted: np.ndarray | None = None  # (N, K) of the latest evaluation, for draw()
        self.val_ranks: np.ndarray | None = None  # (N, K) codes scored above the LAQ code
        logger.info(f"latent actions of {self.labels['laq_run']} (offset {self.labels['offset']})")

    def train_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.model(batch["frame_t"], batch["instruction"], batch["codes"])
        loss = F.cross_entropy(logits.flatten(0, 1), batch["codes"].flatten())
        accuracy = (logits.argmax(-1) == batch["codes"]).float().mean()
        return loss, {"token_acc": accuracy.detach()}

    def evaluate(self) -> dict[str, float]:
        val = self.data.val
        logits = self.logits(val)
        codes = torch.from_numpy(val["codes"]).to(logits.device)
        predicted, ranks = logits.argmax(-1), true_code_ranks(logits, codes)
        self.val_predicted, self.val_ranks = predicted.cpu().numpy(), ranks.cpu().numpy()
        correct = predicted == codes
        nll = F.cross_entropy(self.scored_logits(val, logits).flatten(0, 1), codes.flatten())
        return {
            "val_loss": nll.item(),
            "val_token_acc": correct.float().mean().item(),
            f"val_top{TOP_K}_acc": (ranks < TOP_K).float().mean().item(),
            "val_exact_match": correct.all(1).float().mean().item(),
            **self.baseline,
            "data/skipped_shards": float(len(self.data.skipped)),
        }

    def logits(self, pairs: dict[str, Any]) -> torch.Tensor:
        """Latent-code logits (N, K, C) of held-out ``pairs``, in batches: what the model predicts by itself."""
        return in_batches(self.model, pairs["frame_t"], pairs["instruction"], self.batch_size, self.device)

    def scored_logits(self, pairs: dict[str, Any], logits: torch.Tensor) -> torch.Tensor:
        """The logits ``val_loss`` scores, so that it is the true codes' negative log-likelihood: teacher-forced
        for a head that decodes the codes one after another (its greedy logits are conditioned on its own
        guesses), ``logits`` themselves for one that predicts them all at once."""
        if not self.model.latent_head.teacher_forced:
            return logits
        frames, instructions = pairs["frame_t"], pairs["instruction"]
        return in_batches(self.model, frames, instructions, self.batch_size, self.device, pairs["codes"])

    def draw(self, folder: Path, prefix: str) -> list[Path]:
        """The confusion matrix of each token and the top-k accuracy curves of the latest evaluation (drawn from
        what evaluate() kept: the model is not called, so a sharded model needs no other rank)."""
        if self.val_ranks is None:
            return []
        true, size = self.data.val["codes"], self.labels["codebook_size"]
        codes = pictures.confusion_codes(code_counts(true, size))
        matrices = confusion_matrices(true, self.val_predicted, codes)
        accuracy = (self.val_ranks[..., None] < np.arange(1, size + 1)).mean(0)  # (K, C): k = 1 .. C
        return [
            pictures.confusion(folder / f"{prefix}confusion.png", matrices, codes, size),
            pictures.topk(folder / f"{prefix}topk.png", accuracy),
        ]
