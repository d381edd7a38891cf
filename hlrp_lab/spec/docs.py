"""The spec-key reference of docs/SPECS.md, generated from the pydantic models so it never drifts."""

import inspect
import json
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from hlrp_lab.data.sources import DATA_SOURCES
from hlrp_lab.lib.registry import Registry
from hlrp_lab.spec.schema import SECTIONS, Spec
from hlrp_lab.stages import STAGES

START, END = "<!-- spec-keys:start -->", "<!-- spec-keys:end -->"
BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def type_name(annotation: Any) -> str:
    """``int``, ``float \\| null``, ``list[int]``, ``one of "auto", "fp32"`` for a type annotation."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return type_name(args[0])
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(arg) for arg in args)
    if origin in (Union, UnionType):
        return " \\| ".join(type_name(arg) for arg in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_name(arg) for arg in args)}]"
    return "null" if annotation is type(None) else annotation.__name__


def type_text(field: FieldInfo) -> str:
    bounds = [
        f"{op} {getattr(m, key)}" for m in field.metadata for key, op in BOUNDS.items() if hasattr(m, key)
    ]
    return " ".join([type_name(field.annotation), *bounds])


def default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        default = field.default_factory()
        if isinstance(default, BaseModel):  # a nested block: its keys have a table of their own
            return "see below"
        return f"`{json.dumps(default)}`"
    if field.default is PydanticUndefined:
        return "required"
    return f"`{json.dumps(field.default)}`"


def table(model: type[BaseModel], prefix: str, skip: tuple[str, ...] = ()) -> str:
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        rows.append(
            f"| `{prefix}{name}` | {type_text(field)} | {default_text(field)} | {field.description or ''} |"
        )
    return "\n".join(rows)


def block_model(field: FieldInfo) -> type[BaseModel] | None:
    """The model of a block-valued key (``train.distributed``, or an optional one like ``model.vla.lora``)."""
    for candidate in (field.annotation, *get_args(field.annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def nested_tables(model: type[BaseModel], prefix: str) -> list[str]:
    """A table for each key of ``model`` whose value is a block of keys of its own."""
    parts = []
    for name, field in model.model_fields.items():
        nested = block_model(field)
        if nested is not None:
            parts += [
                f"### `{prefix}.{name}`",
                inspect.cleandoc(nested.__doc__ or ""),
                table(nested, f"{prefix}.{name}."),
            ]
    return parts


def registry_tables(registry: Registry, key: str) -> list[str]:
    parts = []
    for name in registry.names():
        cls: Any = registry.get(name, key)
        config = registry.config_class(name, key)
        parts.append(f"### `{key}`: `{name}`\n\n{(cls.__doc__ or '').strip().splitlines()[0]}\n")
        parts.append(table(config, f"{key}.") if config.model_fields else "No keys besides `name`.")
        parts += nested_tables(config, key)
    return parts


def stage_tables() -> list[str]:
    """The keys each stage adds to a section (``train.init_from``) or as a section of its own (``rollout``)."""
    parts = []
    for name in STAGES.names():
        for section, model in STAGES.config_class(name, "stage").sections.items():
            where = "adds to" if section in SECTIONS else "has the section"
            parts += [
                f"### `{name}` {where} `{section}`",
                (model.__doc__ or "").strip(),
                table(model, f"{section}."),
            ]
    return parts


def spec_keys_markdown() -> str:
    """Markdown tables of every spec key: the framework sections, then each registered class's keys."""
    parts = ["## Top level", table(Spec, "", skip=tuple(SECTIONS))]
    for section, model in SECTIONS.items():
        parts += [f"## `{section}`", (model.__doc__ or "").strip(), table(model, f"{section}.")]
        parts += nested_tables(model, section)
    parts.append(f"## Stages\n\n`stage` is one of: {', '.join(f'`{n}`' for n in STAGES.names())}.")
    parts += stage_tables()
    parts.append("## Data sources")
    parts += registry_tables(DATA_SOURCES, "data.source")
    parts.append("## Components")
    families: dict[str, Registry] = {}
    for stage in STAGES.names():
        for family, registry in STAGES.config_class(stage, "stage").families.items():
            families.setdefault(f"model.{family}", registry)
    for key, registry in families.items():
        parts += registry_tables(registry, key)
    return "\n\n".join(part for part in parts if part) + "\n"


def update_specs_doc(path: Path) -> bool:
    """Rewrite the generated block of ``path``; return whether it changed."""
    text = path.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    updated = f"{head}{START}\n{spec_keys_markdown()}{END}{tail}"
    path.write_text(updated)
    return updated != text
