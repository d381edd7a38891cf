"""Command-line options made from a pydantic config: a data source's keys are declared once, in its config, and
``hlrp-lab data SOURCE`` takes each as an option with the field's type, default and description (as help).

Typer builds every command's options at start-up, so the configs are imported then: they import pydantic
only (no torch, ray or numpy), which keeps ``hlrp-lab --help`` fast.
"""

import functools
import inspect
from collections.abc import Callable
from types import NoneType, UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

PLACEHOLDER = "source_args"  # the command parameter that the config's options replace
NONE_INT = -1  # an `int | None` option whose default is a number takes this for None


def config_options(
    config: type[BaseModel], *, skip: tuple[str, ...] = (), flags: dict[str, str] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator of a typer command: its ``source_args`` parameter becomes one option per field of ``config``
    (but the fields in ``skip``, which the command fills itself), and the command is called with
    ``source_args`` = ``{field: value}``. The option of field ``num_objects`` is ``--num-objects`` unless
    ``flags`` names it otherwise (``{"num_objects": "objects"}``)."""
    flags = flags or {}
    if unknown := (set(skip) | set(flags)) - set(config.model_fields):
        raise ValueError(f"{config.__name__} has no field {', '.join(sorted(unknown))}")
    fields = {name: field for name, field in config.model_fields.items() if name not in skip}
    none_ints = {name for name, field in fields.items() if none_sentinel(field)}

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(command).parameters
        if PLACEHOLDER not in own:
            raise TypeError(f"{command.__name__} needs a parameter {PLACEHOLDER!r} to put the options in")
        params = []
        for param in own.values():
            if param.name == PLACEHOLDER:
                params += [option(name, field, flags.get(name, name)) for name, field in fields.items()]
            else:  # keyword-only: any order of defaults is a valid signature (typer passes keywords)
                params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))

        @functools.wraps(command)
        def run(**values: Any) -> Any:
            source_args = {name: values.pop(name) for name in fields}
            for name in none_ints:
                if source_args[name] == NONE_INT:
                    source_args[name] = None
            return command(**values, **{PLACEHOLDER: source_args})

        run.__signature__ = inspect.Signature(params)  # what typer reads the options from
        return run

    return decorate


def option(name: str, field: FieldInfo, flag: str) -> inspect.Parameter:
    """The typer option of config field ``name``: ``--flag``, the field's type and default, its description
    as help."""
    kind, help_text, extra = field.annotation, field.description or "", {}
    if none_sentinel(field):
        kind, extra = int, {"min": NONE_INT}
        help_text += f" On the command line, {NONE_INT} means null."
    elif optional_of(field.annotation) is not None and field.default is not None:
        raise TypeError(f"option --{flag}: an optional field with a default needs a way to say null")
    if get_origin(optional_of(kind) or kind) is list:
        help_text += (
            f" Repeat the option for several: --{flag.replace('_', '-')} A --{flag.replace('_', '-')} B."
        )
    default = inspect.Parameter.empty if field.is_required() else field.default
    typer_option = typer.Option(f"--{flag.replace('_', '-')}", help=help_text, **extra)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, typer_option]
    )


def none_sentinel(field: FieldInfo) -> bool:
    """An ``int | None`` field with a number as default: the command line says None with ``NONE_INT``."""
    return optional_of(field.annotation) is int and field.default is not None


def optional_of(annotation: Any) -> Any:
    """``X`` of ``X | None`` (None for any other annotation)."""
    if get_origin(annotation) not in (Union, UnionType):
        return None
    args = [arg for arg in get_args(annotation) if arg is not NoneType]
    return args[0] if len(args) == 1 and len(get_args(annotation)) == 2 else None
