"""Name -> class registries: components, stages and data sources are built by name from their spec block.

A component or data source declares a nested pydantic ``Config`` (its spec keys, with defaults) and is built
as ``cls(cls.Config(**block), **wiring)``, where ``wiring`` holds the sizes its stage connects it with.
"""

import importlib
import math
import pkgutil
from collections.abc import Callable
from types import ModuleType
from typing import Any

from pydantic import BaseModel, ValidationError

from hlrp_lab.lib.errors import SpecError

MAX_SHOWN = 80  # characters of a bad value quoted in an error message
NUMBER_TYPE_ERRORS = ("int_type", "float_type")  # pydantic's strict-mode errors for a non-number


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
            raise SpecError(
                f"{printable(key)}: unknown {self.family} {name!r}; registered: {', '.join(self.names())}"
            )
        return self._classes[name]

    def config(self, block: dict[str, Any], key: str) -> BaseModel:
        """Validate a spec block ``{"name": ..., **params}`` against its class's Config."""
        if not isinstance(block, dict) or "name" not in block:
            raise SpecError(
                f"{printable(key)}: expected an object with a 'name' (one of: {', '.join(self.names())})"
            )
        params = {k: v for k, v in block.items() if k != "name"}
        cls = self.get(block["name"], f"{key}.name")
        return validate_model(cls.Config, params, key)

    def build(self, block: dict[str, Any], key: str, **wiring: Any) -> Any:
        """Build the class named in ``block`` from its validated config and the stage's wiring kwargs."""
        config = self.config(block, key)
        return self._classes[block["name"]](config, **wiring)


def validate_model(model: type[BaseModel], data: Any, key: str) -> BaseModel:
    """Validate ``data`` against ``model``; a failure becomes a SpecError naming the dotted spec path.

    Stricter than pydantic's defaults for numbers: a boolean where a number is expected (``true`` would be 1)
    and a NaN or infinite float anywhere in the result (``Infinity``, ``1e999``, "nan") are errors. Otherwise
    the lax rules hold: a whole float such as 1000.0 is accepted for an integer field.
    """
    check_no_bool_numbers(model, data, key)
    try:
        validated = model.model_validate(data)
    except ValidationError as err:
        raise SpecError(describe_validation_error(err, key)) from None
    check_finite(validated.model_dump(), key)
    return validated


def check_no_bool_numbers(model: type[BaseModel], data: Any, key: str) -> None:
    """A boolean given for a number field is an error: pydantic's strict mode finds them."""
    try:
        model.model_validate(data, strict=True)
    except ValidationError as err:
        for error in err.errors():
            if error["type"] in NUMBER_TYPE_ERRORS and isinstance(error["input"], bool):
                path = printable(".".join(str(part) for part in (key, *error["loc"]) if part != ""))
                raise SpecError(
                    f"{path}: Input should be a number, not a boolean (got {error['input']!r})"
                ) from None


def check_finite(node: Any, key: str) -> None:
    """Every float in ``node`` (nested dicts and lists) is finite; else a SpecError naming its dotted key."""
    if isinstance(node, float) and not math.isfinite(node):
        raise SpecError(f"{printable(key)}: Input should be a finite number (got {node!r})")
    if isinstance(node, dict):
        for name, value in node.items():
            check_finite(value, join_key(key, name))
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            check_finite(value, f"{key}[{i}]")


def join_key(key: str, name: Any) -> str:
    return f"{key}.{name}" if key else str(name)


def printable(text: Any) -> str:
    """``text`` for a one-line message: as it is when printable, else escaped (a key holding a newline)."""
    text = str(text)
    return text if text.isprintable() else repr(text)[1:-1]


def describe_validation_error(err: ValidationError, key: str) -> str:
    """The first error as one line: the dotted spec path, what is wrong and the value (shortened)."""
    first = err.errors()[0]
    path = printable(".".join(str(part) for part in (key, *first["loc"]) if part != ""))
    if first["type"] == "extra_forbidden":
        return f"{path}: unknown key; check its spelling against docs/SPECS.md"
    if first["type"] == "missing":
        return f"{path}: required key is missing"
    value = repr(first.get("input"))
    if len(value) > MAX_SHOWN:
        value = value[: MAX_SHOWN - 3] + "..."
    return f"{path}: {first['msg']} (got {value})"


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
