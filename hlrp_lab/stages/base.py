"""The contract between a stage and the stage-agnostic training loop."""

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from hlrp_lab.components.registry import Registry


class Stage(ABC):
    """Builds a model from its components, serves training batches, defines the step and evaluation.

    A stage knows nothing about sessions, trials or checkpoints; the loop knows nothing about the stage.
    """

    families: ClassVar[dict[str, Registry]]  # component families of spec["model"]
    metric: ClassVar[str]  # picks the `best` checkpoint (and is what a search optimizes)
    metric_mode: ClassVar[Literal["max", "min"]]
    graph_metrics: ClassVar[tuple[str, ...]] = ("loss",)  # curves drawn in graph/

    model: nn.Module

    @classmethod
    def prepare_data(cls, spec: dict) -> None:
        """Make or check the data (e.g. write data shards), in the main process, once per run: the lab calls it
        before the run directory exists (and before a search's trials start, so that they find it ready)."""

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
