"""`last` and `best` checkpoints: weights in safetensors, training state beside them, written atomically."""

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from hlrp_lab.lib.errors import CheckpointError


class Checkpoints:
    """``model/{prefix}_{tag}.safetensors`` and ``model/{prefix}_{tag}_state.pt``."""

    def __init__(self, model_dir: Path, prefix: str):
        self.model_dir = model_dir
        self.prefix = prefix

    def weights_path(self, tag: str) -> Path:
        return self.model_dir / f"{self.prefix}_{tag}.safetensors"

    def state_path(self, tag: str) -> Path:
        return self.model_dir / f"{self.prefix}_{tag}_state.pt"

    def exists(self, tag: str) -> bool:
        return self.weights_path(tag).is_file() and self.state_path(tag).is_file()

    def save(self, tag: str, model: nn.Module, state: dict[str, Any]) -> None:
        """Write both files under temporary names, then rename each into place (weights first)."""
        weights, state_file = self.weights_path(tag), self.state_path(tag)
        tmp_weights, tmp_state = (
            weights.with_name(f".{weights.name}.tmp"),
            state_file.with_name(f".{state_file.name}.tmp"),
        )
        save_model(model, str(tmp_weights), metadata={"step": str(state["step"])})
        torch.save(state, tmp_state)
        os.replace(tmp_weights, weights)
        os.replace(tmp_state, state_file)

    def load(self, tag: str, model: nn.Module) -> dict[str, Any]:
        """Load weights into ``model`` and return the saved state; both files must be from the same step."""
        if not self.exists(tag):
            raise CheckpointError(f"no {tag} checkpoint {self.weights_path(tag)} (and its _state.pt)")
        state = torch.load(self.state_path(tag), weights_only=True)
        with safe_open(str(self.weights_path(tag)), framework="pt") as f:
            weights_step = int(f.metadata()["step"])
        if weights_step != state["step"]:
            raise CheckpointError(
                f"{self.weights_path(tag)} is from step {weights_step} but its state from step {state['step']}"
            )
        device = next(model.parameters()).device
        load_model(model, str(self.weights_path(tag)), device=str(device))
        return state
