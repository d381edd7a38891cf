"""Read spec files, substitute ${var} placeholders, apply dotted overrides and mode overrides.

Nothing here imports torch: the orchestration-only CLI resolves specs too. ``check_spec`` (in check.py)
does the deep validation of components, which needs them imported.
"""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydash

from hlrp_lab.lib.errors import SpecError

VAR_PATTERN = re.compile(r"\$\{(\w+)\}")
MODES = ("dev", "train", "eval", "search")


@dataclass(frozen=True)
class Mode:
    """A lab mode; ``run_dir`` is set for ``train@DIR`` (resume) and ``eval@DIR``."""

    name: str
    run_dir: Path | None = None

    @property
    def resume(self) -> bool:
        return self.name == "train" and self.run_dir is not None


def parse_mode(text: str) -> Mode:
    """``dev``, ``train``, ``eval``, ``search``, ``train@RUN_DIR`` or ``eval@RUN_DIR``."""
    name, _, run_dir = text.partition("@")
    if name not in MODES or (run_dir and name not in ("train", "eval")):
        raise SpecError(f"mode {text!r}: expected one of {', '.join(MODES)}, train@RUN_DIR or eval@RUN_DIR")
    if not run_dir:
        return Mode(name)
    path = Path(run_dir)
    if not path.is_dir():
        raise SpecError(f"mode {text!r}: run directory {run_dir} does not exist")
    return Mode(name, path)


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """``-s key=value`` pairs; a value that parses as JSON (number, bool, list) is used as such."""
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SpecError(f"-s {pair}: expected key=value, e.g. -s lr=3e-4")
        values[key] = parse_value(raw)
    return values


def parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def read_spec_file(spec_file: str | Path) -> dict[str, dict]:
    """All named specs in a JSON spec file."""
    path = Path(spec_file)
    if not path.is_file():
        raise SpecError(f"spec file not found: {path}")
    try:
        specs = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SpecError(f"{path}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}") from None
    if not isinstance(specs, dict) or not all(isinstance(v, dict) for v in specs.values()):
        raise SpecError(f"{path}: expected an object mapping spec names to specs")
    return specs


def select_spec(specs: dict[str, dict], spec_name: str, spec_file: str | Path) -> dict:
    if spec_name not in specs:
        raise SpecError(f"{spec_file}: no spec named {spec_name!r}; specs in this file: {', '.join(specs)}")
    return specs[spec_name]


def spec_variables(node: Any) -> set[str]:
    """Names of the ${var} placeholders anywhere in ``node``."""
    if isinstance(node, dict):
        return set().union(*(spec_variables(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(spec_variables(v) for v in node))
    if isinstance(node, str):
        return set(VAR_PATTERN.findall(node))
    return set()


def substitute(node: Any, variables: dict[str, Any], key: str = "") -> Any:
    """Replace ${var}; a string that is exactly one placeholder takes the value's own type."""
    if isinstance(node, dict):
        return {k: substitute(v, variables, f"{key}.{k}" if key else k) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute(v, variables, f"{key}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node
    for name in VAR_PATTERN.findall(node):
        if name not in variables:
            raise SpecError(f"{key}: variable ${{{name}}} is not set; pass -s {name}=VALUE")
    whole = VAR_PATTERN.fullmatch(node)
    if whole:
        return variables[whole.group(1)]
    return VAR_PATTERN.sub(lambda m: str(variables[m.group(1)]), node)


def apply_overrides(spec: dict, overrides: dict[str, Any]) -> dict:
    """Set dotted keys (``-s train.max_step=100``); the parent of each key must be an object."""
    spec = pydash.clone_deep(spec)
    for path, value in overrides.items():
        parent, _, _ = path.rpartition(".")
        if not isinstance(pydash.get(spec, parent), dict):
            raise SpecError(f"-s {path}: {parent!r} is not an object in this spec")
        pydash.set_(spec, path, value)
    return spec


def resolve_spec(spec_file: str | Path, spec_name: str, sets: dict[str, Any]) -> dict:
    """Load one spec and apply ``-s`` values: plain names fill ${var}, dotted names override keys."""
    spec = select_spec(read_spec_file(spec_file), spec_name, spec_file)
    variables = {k: v for k, v in sets.items() if "." not in k}
    overrides = {k: v for k, v in sets.items() if "." in k}
    used = spec_variables(spec)
    for name in variables:
        if name not in used:
            known = ", ".join(sorted(used)) or "none"
            raise SpecError(f"-s {name}: spec {spec_name!r} has no ${{{name}}}; its variables: {known}")
    spec = apply_overrides(substitute(spec, variables), overrides)
    pydash.set_(spec, "meta.variables", sets)
    return spec


def override_mode(spec: dict, mode: str) -> dict:
    """``dev``: one session, max_step capped at train.dev_max_step, at least one mid-run evaluation."""
    if mode != "dev":
        return spec
    spec = pydash.clone_deep(spec)
    train = spec["train"]
    train["max_step"] = min(train["max_step"], train["dev_max_step"])
    train["eval_frequency"] = min(train["eval_frequency"], math.ceil(train["max_step"] / 2))
    train["log_frequency"] = min(train["log_frequency"], max(1, train["max_step"] // 10))
    spec["meta"]["max_session"] = 1
    spec["meta"]["max_trial"] = 1
    return spec
