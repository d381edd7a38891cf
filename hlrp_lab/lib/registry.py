"""Name -> class registries: components, stages and data sources are built by name from their spec block.

Each registered name has a pydantic config (its spec keys, with defaults) and an implementation class built
as ``cls(config, **wiring)``, where ``wiring`` holds the sizes its stage connects it with. Configs live in
modules whose name starts with ``config`` and that import only pydantic, so that a spec is validated without
importing torch; the implementation, in a module of its own, points at its config with ``Config = ...``.
"""

import functools
import importlib
import math
import pkgutil
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from hlrp_lab.lib.errors import SpecError

MAX_SHOWN = 80  # characters of a bad value quoted in an error message
NUMBER_TYPE_ERRORS = ("int_type", "float_type")  # pydantic's strict-mode errors for a non-number
CONFIG_MODULE_PREFIX = "config"  # modules whose name starts with this hold configs only


class Strict(BaseModel):
    """A config whose unknown keys are errors (a misspelt key must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid")


class Registry:
    """Configs and classes of one family (encoder, quantizer, ...), by name."""

    def __init__(self, family: str, *packages: str):
        self.family = family
        self.packages = list(packages)
        self._configs: dict[str, type[BaseModel]] = {}
        self._classes: dict[str, type] = {}

    def add_package(self, package: str) -> None:
        """Also look for this family's configs and classes in ``package`` (a layer above may add some)."""
        if package not in self.packages:
            self.packages.append(package)

    def register_config(self, name: str) -> Callable[[type[BaseModel]], type[BaseModel]]:
        """Decorator of a config class: the spec keys of ``name``."""

        def add(config: type[BaseModel]) -> type[BaseModel]:
            if name in self._configs:
                raise ValueError(f"{self.family} config {name!r} is registered twice")
            self._configs[name] = config
            return config

        return add

    def register(self, cls: type) -> type:
        """Class decorator: register ``cls`` under its class name."""
        return self._add(cls.__name__, cls)

    def register_as(self, name: str) -> Callable[[type], type]:
        """Class decorator: register ``cls`` under ``name`` (for lower-case names such as stages)."""
        return lambda cls: self._add(name, cls)

    def _add(self, name: str, cls: type) -> type:
        if name in self._classes:
            raise ValueError(f"{self.family} {name!r} is registered twice")
        config = self._configs.get(name)
        if config is None or getattr(cls, "Config", None) is not config:
            raise ValueError(
                f"{self.family} {name!r}: register its config with @register_config({name!r}) in a config*.py "
                "module of the family and set `Config = ` that class"
            )
        self._classes[name] = cls
        return cls

    def names(self) -> list[str]:
        """Every registered name (from the config modules: no implementation is imported)."""
        self._import(configs_only=True)
        return sorted(self._configs)

    def config_class(self, name: Any, key: str) -> type[BaseModel]:
        """The config of ``name``, imported without its implementation; ``key`` is the spec path used in the
        error message."""
        self._import(configs_only=True)
        if not isinstance(name, str) or name not in self._configs:
            raise SpecError(
                f"{printable(key)}: unknown {self.family} {name!r}; registered: {', '.join(self.names())}"
            )
        return self._configs[name]

    def get(self, name: Any, key: str) -> type:
        """The implementation class of ``name`` (imports the family's implementations)."""
        self.config_class(name, key)
        self._import(configs_only=False)
        if name not in self._classes:
            raise SpecError(f"{printable(key)}: {self.family} {name!r} has a config but no implementation")
        return self._classes[name]

    def config(self, block: Any, key: str) -> BaseModel:
        """Validate a spec block ``{"name": ..., **params}`` against its config."""
        if not isinstance(block, dict) or "name" not in block:
            raise SpecError(
                f"{printable(key)}: expected an object with a 'name' (one of: {', '.join(self.names())})"
            )
        params = {k: v for k, v in block.items() if k != "name"}
        return validate_model(self.config_class(block["name"], f"{key}.name"), params, key)

    def build(self, block: dict[str, Any], key: str, **wiring: Any) -> Any:
        """Build the class named in ``block`` from its validated config and the stage's wiring kwargs."""
        config = self.config(block, key)
        return self.get(block["name"], f"{key}.name")(config, **wiring)

    def _import(self, configs_only: bool) -> None:
        for package in self.packages:
            import_package(package, configs_only)


@functools.cache
def import_package(package: str, configs_only: bool) -> None:
    """Import the modules under ``package`` (only its ``config*`` modules if ``configs_only``) so that their
    classes register themselves; once per process (an import is for good, the package walk is not free)."""
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        if not configs_only or info.name.rpartition(".")[2].startswith(CONFIG_MODULE_PREFIX):
            importlib.import_module(info.name)


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
