"""Spec validation without torch: the framework keys and the stage's own (``spec_model``), and every component
block against its config. The dry build of the model on the meta device is a second step above this layer
(``experiment/build.py``), run before a run starts and by ``spec check --build``."""

from pathlib import Path

import pydash

from hlrp_lab.data.sources import DATA_SOURCES
from hlrp_lab.lib.batch import micro_batch
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.layout import RunLayout
from hlrp_lab.lib.registry import Registry, printable, validate_model
from hlrp_lab.lib.world import World
from hlrp_lab.spec.schema import Spec, spec_model
from hlrp_lab.spec.search_space import check_search
from hlrp_lab.spec.spec_util import (
    apply_overrides,
    check_key_placeholders,
    read_spec_file,
    select_spec,
    spec_variables,
)
from hlrp_lab.stages import STAGES
from hlrp_lab.stages.config import StageConfig


def check_spec(spec: dict, ranks: int | None = None) -> dict:
    """Validate ``spec`` for ``ranks`` processes (default: as launched) and return it with every default
    filled in (what a run saves)."""
    stage = stage_config(spec)
    checked = validate_model(Spec if stage is None else spec_model(stage), spec, "").model_dump()
    stage = stage or STAGES.config_class(checked["stage"], "stage")
    checked["model"] = check_components(checked["model"], stage.families, checked["stage"])
    if checked["data"]["source"] is not None:
        checked["data"]["source"] = check_block(DATA_SOURCES, checked["data"]["source"], "data.source")
    check_search(checked)
    check_distributed(checked, stage, World.launched().size if ranks is None else ranks)
    return checked


def check_distributed(spec: dict, stage: type[StageConfig], ranks: int) -> None:
    """The strategy fits the stage and the number of ranks, and the global batch splits over them."""
    train = spec["train"]
    strategy = train["distributed"]["strategy"]
    if strategy == "fsdp" and not stage.shardable:
        raise SpecError(
            f"train.distributed.strategy: fsdp shards the transformer blocks of a VLA; stage {spec['stage']!r} "
            "replicates its model: use ddp (or auto)"
        )
    if strategy == "none" and ranks > 1:
        raise SpecError(
            f"train.distributed.strategy: none trains in one process, but {ranks} ranks were launched; use "
            "auto, ddp or fsdp, or launch one process"
        )
    if train["distributed"]["cpu_offload"] and (strategy in ("none", "ddp") or not stage.shardable):
        raise SpecError(
            "train.distributed.cpu_offload: offloads FSDP's shards; this spec's strategy "
            f"{strategy if stage.shardable else 'for stage ' + repr(spec['stage'])} does not shard: set it to false"
        )
    if train["distributed"]["cpu_offload"] and train["device"] == "cpu":
        raise SpecError(
            "train.distributed.cpu_offload: moves a GPU's parameters and optimizer states to the CPU, and "
            "train.device is cpu; set it to false"
        )
    micro_batch(spec["data"]["batch_size"], train["grad_accum"], ranks)


# Keys every stage's saved spec held (with defaults) before stages declared their own keys.
FORMER_FRAMEWORK_KEYS = ("rollout", "train.init_from", "train.eval_rollouts", "data.action_chunk")


def drop_former_keys(spec: dict) -> dict:
    """A saved spec without the former framework keys its stage does not declare (they did nothing there), so
    that runs saved before stages declared their keys still load."""
    stage = stage_config(spec)
    if stage is None:
        return spec
    kept = spec
    for key in FORMER_FRAMEWORK_KEYS:
        section, _, name = key.partition(".")
        declared = section in stage.sections and (not name or name in stage.sections[section].model_fields)
        if not declared and pydash.has(kept, key):
            kept = pydash.omit(kept, key)
    return kept


def stage_config(spec: object) -> type[StageConfig] | None:
    """The config of the spec's stage, when it names one that exists (else the framework schema reports)."""
    name = spec.get("stage") if isinstance(spec, dict) else None
    return STAGES.config_class(name, "stage") if isinstance(name, str) else None


def check_components(model: dict, families: dict[str, Registry], stage: str) -> dict:
    """Each family the stage needs, validated by the registry of that family."""
    for key in model:
        if key not in families:
            raise SpecError(
                f"model.{printable(key)}: stage {stage!r} has no such component; "
                f"expected: {', '.join(families)}"
            )
    checked = {}
    for family, registry in families.items():
        if family not in model:
            raise SpecError(
                f"model.{family}: required by stage {stage!r}; one of: {', '.join(registry.names())}"
            )
        checked[family] = check_block(registry, model[family], f"model.{family}")
    return checked


def check_block(registry: Registry, block: dict, key: str) -> dict:
    config = registry.config(block, key)
    return {"name": block["name"], **config.model_dump()}


def check_unresolved(spec: dict) -> dict:
    """Check a spec whose ${var}s are unset (``spec check``): a placeholder stays as its text where a string
    is valid (a path, a pattern) and its key falls back to the default where it is not (a number); a
    placeholder in a key name is an error."""
    check_key_placeholders(spec)
    while True:
        try:
            return check_spec(spec)
        except SpecError as err:
            key = str(err).split(":", 1)[0]
            if not spec_variables(pydash.get(spec, key)) or isinstance(pydash.get(spec, key), dict):
                raise
            spec = pydash.omit(spec, key)


def load_run_spec(
    run_dir: Path, spec_name: str, overrides: dict | None = None, ranks: int | None = None
) -> dict:
    """The spec a run saved, re-checked (for ``ranks``, default: as launched), pointing at ``run_dir`` wherever
    it now lives."""
    path = RunLayout(run_dir, spec_name).spec_file
    if not path.is_file():
        raise SpecError(f"{run_dir}: no saved spec {path.name}; is this a run directory of {spec_name!r}?")
    spec = select_spec(read_spec_file(path), spec_name, path)
    spec = check_spec(apply_overrides(drop_former_keys(spec), overrides or {}), ranks)
    spec["meta"]["run_dir"] = str(run_dir)
    return spec
