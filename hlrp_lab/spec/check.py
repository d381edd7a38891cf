"""Deep spec validation: the framework keys, every component block against its class's Config, and a
dry build of the model on the meta device (no memory, no data) so size mismatches fail before a run."""

import pydash
import torch

from hlrp_lab.components.registry import DATA_SOURCES, STAGES, Registry, printable, validate_model
from hlrp_lab.experiment.optim import optimizer_kwargs
from hlrp_lab.experiment.search_space import check_search
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.spec.schema import Spec
from hlrp_lab.spec.spec_util import check_key_placeholders, spec_variables


def check_spec(spec: dict) -> dict:
    """Validate ``spec`` and return it with every default filled in (what a run saves)."""
    checked = validate_model(Spec, spec, "").model_dump()
    stage_cls = STAGES.get(checked["stage"], "stage")
    checked["model"] = check_components(checked["model"], stage_cls.families, checked["stage"])
    if checked["data"]["source"] is not None:
        checked["data"]["source"] = check_block(DATA_SOURCES, checked["data"]["source"], "data.source")
    optimizer_kwargs(checked["optim"])
    try:
        with torch.device("meta"):
            stage_cls.check_model(checked)
    except ValueError as err:
        raise SpecError(f"model: {err}") from None
    check_search(checked)
    return checked


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
