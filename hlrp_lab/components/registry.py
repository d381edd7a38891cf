"""Name -> class registries: components, stages and data sources are built by name from their spec block.

A component or data source declares a nested pydantic ``Config`` (its spec keys, with defaults) and is built
as ``cls(cls.Config(**block), **wiring)``, where ``wiring`` holds the sizes its stage connects it with.
"""

import importlib
import pkgutil
from collections.abc import Callable
from types import ModuleType
from typing import Any

from pydantic import BaseModel, ValidationError

from hlrp_lab.lib.errors import SpecError


class Registry:
    """Classes of one family (encoder, quantizer, ...) registered under their class name."""

    def __init__(self, family: str, package: str):
        self.family = family
        self.package = package
        self._classes: dict[str, type] = {}

    def register(self, cls: type) -> type:
        """Class decorator: register ``cls`` under its class name."""
        return self._add(cls.__name__, cls)

    def register_as(self, name: str) -> Callable[[type], type]:
        """Class decorator: register ``cls`` under ``name`` (for lower-case names such as stages)."""
        return lambda cls: self._add(name, cls)

    def _add(self, name: str, cls: type) -> type:
        if name in self._classes:
            raise ValueError(f"{self.family} {name!r} is registered twice")
        self._classes[name] = cls
        return cls

    def names(self) -> list[str]:
        import_all(self.package)
        return sorted(self._classes)

    def get(self, name: str, key: str) -> type:
        """The class named ``name``; ``key`` is the spec path used in the error message."""
        import_all(self.package)
        if name not in self._classes:
            raise SpecError(f"{key}: unknown {self.family} {name!r}; registered: {', '.join(self.names())}")
        return self._classes[name]

    def config(self, block: dict[str, Any], key: str) -> BaseModel:
        """Validate a spec block ``{"name": ..., **params}`` against its class's Config."""
        if not isinstance(block, dict) or "name" not in block:
            raise SpecError(f"{key}: expected an object with a 'name' (one of: {', '.join(self.names())})")
        params = {k: v for k, v in block.items() if k != "name"}
        cls = self.get(block["name"], f"{key}.name")
        return validate_model(cls.Config, params, key)

    def build(self, block: dict[str, Any], key: str, **wiring: Any) -> Any:
        """Build the class named in ``block`` from its validated config and the stage's wiring kwargs."""
        config = self.config(block, key)
        return self._classes[block["name"]](config, **wiring)


def validate_model(model: type[BaseModel], data: Any, key: str) -> BaseModel:
    """Validate ``data`` against ``model``; a failure becomes a SpecError naming the dotted spec path."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise SpecError(describe_validation_error(err, key)) from None


def describe_validation_error(err: ValidationError, key: str) -> str:
    first = err.errors()[0]
    path = ".".join(str(part) for part in (key, *first["loc"]) if part != "")
    value = first.get("input")
    if first["type"] == "extra_forbidden":
        return f"{path}: unknown key; check its spelling against docs/SPECS.md"
    if first["type"] == "missing":
        return f"{path}: required key is missing"
    return f"{path}: {first['msg']} (got {value!r})"


def import_all(package: str) -> None:
    """Import every module under ``package`` so that their classes register themselves."""
    root: ModuleType = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        importlib.import_module(info.name)


ENCODERS = Registry("encoder", "hlrp_lab.components.encoder")
QUANTIZERS = Registry("quantizer", "hlrp_lab.components.quantizer")
DECODERS = Registry("decoder", "hlrp_lab.components.decoder")
STAGES = Registry("stage", "hlrp_lab.stages")
DATA_SOURCES = Registry("data source", "hlrp_lab.data.sources")
VLAS = Registry("vla", "hlrp_lab.components.vla")
LATENT_HEADS = Registry("latent head", "hlrp_lab.components.latent_head")
ACTION_HEADS = Registry("action head", "hlrp_lab.components.action_head")
