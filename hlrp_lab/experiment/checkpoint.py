"""`last` and `best` checkpoints: weights in safetensors, training state beside them, written atomically.

Both files are written under temporary names and renamed into place only once both are whole, so no reader ever
sees a half-written file; ``recover`` finishes or removes what a writer killed mid-save left behind.

A stage that FSDP can shard keeps its `last` checkpoint with torch.distributed.checkpoint instead
(``ShardedLast``): every rank writes its shards into a folder for the step, then rank 0 renames the state file
that names the folder into place; any number of ranks (one included) can load it, each reading what it holds.
"""

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError
from safetensors.torch import save_file, save_model
from torch import nn
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from hlrp_lab.lib.distributed import barrier
from hlrp_lab.lib.errors import CheckpointError, RunError
from hlrp_lab.lib.layout import checkpoint_name, checkpoint_shards_name, checkpoint_state_name
from hlrp_lab.lib.scrub import error_line
from hlrp_lab.lib.util import temp_path, write_temp
from hlrp_lab.lib.weights import file_metadata, load_weights
from hlrp_lab.lib.world import World

Weights = nn.Module | dict[str, torch.Tensor]  # a model, or its full state dict
T = TypeVar("T")

TAGS = ("last", "best")
MAX_CAUSE_LENGTH = 203  # characters of the underlying error quoted in a checkpoint error


class Checkpoints:
    """The checkpoints of the session whose files start with ``prefix``, in ``model_dir``: weights and state
    of each tag, named as ``RunLayout.checkpoint`` and ``RunLayout.checkpoint_state`` say."""

    def __init__(self, model_dir: Path, prefix: str):
        self.model_dir = model_dir
        self.prefix = prefix

    def weights_path(self, tag: str) -> Path:
        return self.model_dir / checkpoint_name(self.prefix, tag)

    def state_path(self, tag: str) -> Path:
        return self.model_dir / checkpoint_state_name(self.prefix, tag)

    def written(self, tag: str) -> bool:
        """Whether any file of the ``tag`` checkpoint is there (``load`` says if one is missing or unusable)."""
        return self.weights_path(tag).is_file() or self.state_path(tag).is_file()

    @property
    def advice(self) -> str:
        return f"free space and resume with train@{self.model_dir.parent}"

    def save(self, tag: str, model: Weights, state: dict[str, Any]) -> None:
        """Write both files under temporary names, then rename each into place (weights first). A write error
        removes the temporary files, leaves the previous checkpoint as it was and raises a one-line RunError."""
        weights, state_file = self.weights_path(tag), self.state_path(tag)
        metadata = {"step": str(state["step"]), **state.get("base", {})}
        tmp_weights = write_temp(weights, lambda tmp: save_weights(model, tmp, metadata), self.advice)
        try:
            tmp_state = write_temp(state_file, lambda tmp: save_state(state, tmp), self.advice)
        except RunError:
            tmp_weights.unlink()
            raise
        os.replace(tmp_weights, weights)
        os.replace(tmp_state, state_file)

    def save_state(self, tag: str, state: dict[str, Any]) -> None:
        """The state file alone, atomically (a sharded checkpoint's commit point)."""
        state_file = self.state_path(tag)
        os.replace(write_temp(state_file, lambda tmp: save_state(state, tmp), self.advice), state_file)

    def recover(self) -> None:
        """Finish or remove what a writer killed mid-save left: a whole state file whose weights were already
        renamed into place (same step) is renamed too; every other temporary file is deleted."""
        for tag in TAGS:
            weights, state_file = self.weights_path(tag), self.state_path(tag)
            tmp_weights, tmp_state = temp_path(weights), temp_path(state_file)
            step = None if tmp_weights.exists() else readable(weights_step, weights)
            if step is not None and readable(state_step, tmp_state) == step:
                os.replace(tmp_state, state_file)
            tmp_weights.unlink(missing_ok=True)
            tmp_state.unlink(missing_ok=True)

    def load(self, tag: str, model: nn.Module) -> dict[str, Any]:
        """Load weights into ``model`` and return the saved state. Both files must be there, readable, from the
        same step and match the model; else a one-line CheckpointError says which file and what to do."""
        weights, state_file = self.weights_path(tag), self.state_path(tag)
        if not self.written(tag):
            raise CheckpointError(f"no {tag} checkpoint {weights} (and its _state.pt)")
        for path, other in ((weights, state_file), (state_file, weights)):
            if not path.is_file():
                raise self.unusable(tag, f"checkpoint file {path} is missing (its {other.name} is there)")
        step = self.read(tag, weights, weights_step)
        state = self.read(tag, state_file, read_state)
        if step != state.get("step"):
            raise self.unusable(
                tag, f"{weights} is from step {step} but its state from step {state.get('step')}"
            )
        device = next(model.parameters()).device
        try:
            load_weights(model, weights, device)
        except RuntimeError as err:
            problem = f"{weights} does not match the spec's model ({summary(err)})"
            raise self.unusable(
                tag, problem, "set back what changed the model (a -s model.* override?), or "
            ) from err
        return state

    def read(self, tag: str, path: Path, read: Callable[[Path], Any]) -> Any:
        """``read(path)``, or a CheckpointError saying the file is corrupt."""
        try:
            return read(path)
        except Exception as err:  # whatever a truncated or garbled file raises, it is unusable
            raise self.unusable(tag, f"checkpoint file {path} is corrupt ({summary(err)})") from err

    def unusable(self, tag: str, problem: str, first: str = "") -> CheckpointError:
        """``problem`` and what to do about an unusable ``tag`` checkpoint, as one line."""
        if tag == "best":
            last = f"{self.weights_path('last').name} and {self.state_path('last').name}"
            todo = f"retrain, or copy {last} over these to evaluate the last weights instead"
        else:
            present = [p.name for p in (self.weights_path(tag), self.state_path(tag)) if p.is_file()]
            todo = f"remove {' and '.join(present)} to train this session again from step 0"
            best = self.weights_path("best")
            if best.is_file():
                todo += f"; {best.name} is untouched (retraining replaces it: copy it first)"
        return CheckpointError(f"{problem}; {first}{todo}")


def save_weights(model: Weights, path: Path, metadata: dict[str, str]) -> None:
    """``save_model`` (or ``save_file`` of a state dict) with ``metadata`` (the step, a LoRA model's base); its
    I/O errors raised as OSError (safetensors reports them as SafetensorError)."""
    try:
        if isinstance(model, nn.Module):
            save_model(model, str(path), metadata=metadata)
        else:
            save_file(unshared(model), str(path), metadata=metadata)
    except SafetensorError as err:
        code = re.search(r"os error (\d+)", str(err))
        raise (OSError(int(code[1]), os.strerror(int(code[1]))) if code else OSError(str(err))) from err


def save_state(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` through a Python file, so that a write error is an OSError with its errno."""
    with open(path, "wb") as f:
        try:
            torch.save(state, f)
        except RuntimeError as err:  # the zip writer's cleanup can fail too and hide the OSError
            if isinstance(err.__context__, OSError):
                raise err.__context__ from None
            raise


def unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict whose tied tensors (one storage under several names) are kept once, contiguous: what
    ``load_model`` expects of a model with tied weights."""
    kept: dict[str, torch.Tensor] = {}
    seen: set[tuple] = set()
    for name, tensor in tensors.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.shape, tensor.stride())
        if key in seen and tensor.numel():  # empty tensors share no data (all point at 0)
            continue
        seen.add(key)
        kept[name] = tensor.contiguous()
    return kept


def weights_step(path: Path) -> int:
    """The step in the metadata of a weights file (reading its header checks that the file is whole)."""
    return int(file_metadata(path)["step"])


def read_state(path: Path) -> dict[str, Any]:
    state = torch.load(path, weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(f"a {type(state).__name__} where a dict was saved")
    return state


def state_step(path: Path) -> int:
    return read_state(path)["step"]


def readable(read: Callable[[Path], T], path: Path) -> T | None:
    """``read(path)``, or None when the file is missing or cannot be read."""
    try:
        return read(path)
    except Exception:  # noqa: BLE001 - a missing, truncated or garbled file: nothing to recover from it
        return None


def summary(err: BaseException) -> str:
    """What a checkpoint file raised as ``Type: message`` on one line (``error_line``; no secrets in it)."""
    return error_line(err, secrets=[], limit=MAX_CAUSE_LENGTH)


class ShardedLast:
    """The `last` checkpoint of a shardable stage: model and optimizer through torch.distributed.checkpoint
    into ``{stem}_last_step{step}.dcp/`` (every rank writes its own shards), and the training state beside it,
    written last by rank 0 and naming the folder. Loaded by any number of ranks: DCP reshards."""

    def __init__(self, checkpoints: Checkpoints, omitted: set[str] | None = None):
        self.checkpoints = checkpoints
        self.omitted = omitted or set()  # state-dict names left out: a LoRA model's base (lib.weights)

    def state_dicts(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """This rank's shards of the model (less the omitted weights) and of the optimizer state."""
        model_state, optim_state = get_state_dict(module, optimizer)
        kept = {name: value for name, value in model_state.items() if name not in self.omitted}
        return {"model": kept, "optim": optim_state}

    def folder(self, step: int) -> Path:
        return self.checkpoints.model_dir / checkpoint_shards_name(self.checkpoints.prefix, "last", step)

    def written(self) -> bool:
        return self.checkpoints.state_path("last").is_file()

    def save(self, module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Every rank: write the shards, then rank 0 commits the state file and removes older folders."""
        folder = self.folder(state["step"])
        try:
            dcp.save(self.state_dicts(module, optimizer), checkpoint_id=folder)
        except (OSError, CheckpointException) as err:  # DCP reports its ranks' write errors as the latter
            raise RunError(f"could not write {folder}: {summary(err)}; {self.checkpoints.advice}") from err
        if World.current().main:
            self.checkpoints.save_state("last", {**state, "shards": folder.name})
            self.remove_folders(keep=folder.name)
        barrier()

    def load(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Load model and optimizer state into this rank's shards of them; return the training state."""
        state_file = self.checkpoints.state_path("last")
        state = self.checkpoints.read("last", state_file, read_state)
        if "shards" not in state:
            raise CheckpointError(
                f"{state_file} belongs to a `last` checkpoint written before sharded checkpoints; its run's "
                "`best` still evaluates: train again to resume"
            )
        folder = self.checkpoints.model_dir / state["shards"]
        if not (folder / ".metadata").is_file():
            raise self.checkpoints.unusable("last", f"checkpoint folder {folder} is missing or incomplete")
        loaded = self.state_dicts(module, optimizer)
        try:
            dcp.load(loaded, checkpoint_id=folder)
        except (Exception, CheckpointException) as err:  # a shard missing, truncated or from another model
            problem = f"{folder} cannot be loaded into the spec's model ({summary(err)})"
            raise self.checkpoints.unusable("last", problem) from err
        set_state_dict(
            module,
            optimizer,
            model_state_dict=loaded["model"],
            optim_state_dict=loaded["optim"],
            options=StateDictOptions(strict=not self.omitted),
        )
        return state

    def recover(self) -> None:
        """Rank 0, before loading: remove the folders a killed save left that no state file names."""
        self.checkpoints.recover()
        state_file = self.checkpoints.state_path("last")
        state = readable(read_state, state_file)
        if state is not None or not state_file.exists():  # an unreadable state file: keep all for a look
            self.remove_folders(keep=None if state is None else state.get("shards"))

    def remove_folders(self, keep: str | None) -> None:
        for folder in self.checkpoints.model_dir.glob(
            checkpoint_shards_name(self.checkpoints.prefix, "last", "*")
        ):
            if folder.name != keep:
                shutil.rmtree(folder, ignore_errors=True)
