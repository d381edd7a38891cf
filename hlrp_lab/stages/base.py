"""The contract between a stage and the stage-agnostic training loop."""

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from loguru import logger
from torch import nn

from hlrp_lab.data.dataset import check_data, data_urls
from hlrp_lab.stages.config import StageConfig


class Stage(ABC):
    """Builds a model from its components, serves training batches, defines the step and evaluation.

    A stage knows nothing about sessions, trials or checkpoints; the loop knows nothing about the stage.
    """

    Config: ClassVar[
        type[StageConfig]
    ]  # the torch-free half: families, metric, curves, the spec keys it adds

    model: nn.Module

    @classmethod
    def prepare_data(cls, spec: dict) -> list[str]:
        """Make or check the data (e.g. write data shards), in the main process, once per run: the lab calls it
        before the run directory exists (and before a search's trials start, so that they find it ready).
        Returns the shard URLs; a stage that checks more calls this first."""
        urls = data_urls(spec["data"])
        check_data(urls, spec["data"])
        logger.info(f"data: {len(urls)} shards, first {urls[0]}")
        return urls

    @classmethod
    def prepare(cls, spec: dict) -> None:
        """Once per trial, in the main process, before any session starts: anything of the trial's own (e.g.
        its tokenizer); the data is ready (``prepare_data``)."""

    @classmethod
    @abstractmethod
    def build_model(cls, spec: dict) -> nn.Module:
        """The model alone, from spec["model"] and the data sizes."""

    @classmethod
    def check_model(cls, spec: dict) -> None:
        """Dry-build the model to check a spec (called on the meta device: no memory, no data)."""
        cls.build_model(spec)

    @abstractmethod
    def train_batch(self, index: int) -> dict[str, Any]:
        """Micro-batch number ``index`` of the run, on the stage's device; the same index gives the same batch."""

    @abstractmethod
    def train_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to minimise and detached scalar tensors to log."""

    @abstractmethod
    def evaluate(self) -> dict[str, float]:
        """Held-out metrics, including ``metric``; called under torch.no_grad with the model in eval mode."""

    def draw(self, folder: Path, prefix: str) -> list[Path]:
        """Pictures of the latest ``evaluate()``: PNGs ``{prefix}{name}.png`` in ``folder``; their paths.

        Called on rank 0 alone, right after ``evaluate()``, with the model in eval mode under torch.no_grad.
        A sharded model (FSDP) must not run here (the other ranks would wait for it): draw from what
        ``evaluate()`` kept. None by default."""
        return []
