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
from hlrp_lab.lib.names import check_name
from hlrp_lab.lib.registry import printable
from hlrp_lab.spec.schema import LAB_KEYS

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


def check_launch(mode: str, ranks: int) -> None:
    """Modes that run in one process refuse a distributed launch on ``ranks``."""
    if ranks > 1 and mode in ("eval", "search"):
        why = (
            "a search spreads its trials with Ray Tune"
            if mode == "search"
            else "it loads the consolidated best"
        )
        raise SpecError(
            f"{mode} runs in one process ({why}), not on {ranks} ranks; run it without --nproc-per-node or torchrun"
        )


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """``-s key=value`` pairs; a value that parses as JSON (number, bool, list) is used as such."""
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SpecError(f"-s {printable(pair)}: expected key=value, e.g. -s lr=3e-4")
        values[key] = parse_value(raw, f"-s {printable(key)}")
    return values


def parse_value(raw: str, what: str = "value") -> Any:
    """``raw`` as JSON if it is JSON (number, bool, null, list, object), else the string itself. ``what``
    names it in the error for JSON that Python cannot hold (thousands of digits, deep nesting)."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw
    except (ValueError, RecursionError):
        raise SpecError(f"{what}: the value is too long a number or nested too deeply to read") from None


def read_spec_file(spec_file: str | Path) -> dict[str, dict]:
    """All named specs in a JSON spec file."""
    path = Path(spec_file)
    if path.is_dir():
        raise SpecError(f"{path} is a directory, expected a JSON spec file")
    if not path.is_file():
        raise SpecError(f"spec file not found: {path}")
    try:
        specs = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SpecError(f"{path}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}") from None
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not UTF-8 text (byte {err.start}); save the spec file as UTF-8") from None
    except OSError as err:
        raise SpecError(f"{path}: cannot read the spec file: {err.strerror}") from None
    except (ValueError, RecursionError):
        raise SpecError(f"{path}: a number too long or nesting too deep to read as a spec") from None
    if not isinstance(specs, dict) or not all(isinstance(v, dict) for v in specs.values()):
        raise SpecError(f"{path}: expected an object mapping spec names to specs")
    return specs


def select_spec(specs: dict[str, dict], spec_name: str, spec_file: str | Path) -> dict:
    """The spec named ``spec_name``, which must be safe as a directory name (it names the run directory)."""
    check_name(spec_name, "spec name")
    if spec_name not in specs:
        names = printable(", ".join(specs))
        raise SpecError(f"{spec_file}: no spec named {spec_name!r}; specs in this file: {names}")
    return specs[spec_name]


def check_key_placeholders(node: Any, key: str = "") -> None:
    """A ``${var}`` in a key name is an error naming the key: placeholders are replaced in values only."""
    if isinstance(node, list):
        for i, value in enumerate(node):
            check_key_placeholders(value, f"{key}[{i}]")
    if not isinstance(node, dict):
        return
    for name, value in node.items():
        path = f"{key}.{name}" if key else str(name)
        if VAR_PATTERN.search(str(name)):
            raise SpecError(
                f"{printable(path)}: a ${{var}} placeholder in a key name is not supported; placeholders are "
                "replaced in values only (override a key with -s section.key=VALUE)"
            )
        check_key_placeholders(value, path)


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
            raise SpecError(f"{printable(key)}: variable ${{{name}}} is not set; pass -s {name}=VALUE")
    whole = VAR_PATTERN.fullmatch(node)
    if whole:
        return variables[whole.group(1)]
    return VAR_PATTERN.sub(lambda m: str(variables[m.group(1)]), node)


def apply_overrides(spec: dict, overrides: dict[str, Any]) -> dict:
    """Set dotted keys (``-s train.max_step=100``); a missing parent becomes an object (so that
    ``-s train.distributed.strategy=ddp`` works where the spec leaves the block to its defaults; the schema
    then names a key that does not exist), a parent that is not an object is an error. Each dot separates
    two key names (no list indices), and keys the lab sets itself (LAB_KEYS) cannot be set."""
    spec = pydash.clone_deep(spec)
    for path, value in overrides.items():
        *parents, last = override_keys(path)
        parent = spec
        for depth, name in enumerate(parents, start=1):
            parent = parent.setdefault(name, {})
            if not isinstance(parent, dict):
                parent_key = ".".join(parents[:depth])
                raise SpecError(f"-s {printable(path)}: {parent_key!r} is not an object in this spec")
        parent[last] = value
    return spec


def override_keys(path: str) -> list[str]:
    """The key names of a dotted ``-s`` path; an empty name or a key the lab sets is an error."""
    names = path.split(".")
    if not all(names):
        raise SpecError(
            f"-s {printable(path)}: empty key name in the dotted path; write it as section.key, "
            "e.g. train.max_step"
        )
    for lab_key in LAB_KEYS:
        if path == lab_key or path.startswith(f"{lab_key}."):
            raise SpecError(
                f"-s {printable(path)}: {lab_key} is set by the lab when a run starts and cannot be "
                "overridden"
            )
    return names


def resolve_spec(spec_file: str | Path, spec_name: str, sets: dict[str, Any]) -> dict:
    """Load one spec and apply ``-s`` values: plain names fill ${var}, dotted names override keys."""
    spec = select_spec(read_spec_file(spec_file), spec_name, spec_file)
    check_key_placeholders(spec)
    variables = {k: v for k, v in sets.items() if "." not in k}
    overrides = {k: v for k, v in sets.items() if "." in k}
    used = spec_variables(spec)
    for name in variables:
        if name not in used:
            known = ", ".join(sorted(used)) or "none"
            shown = printable(name)
            raise SpecError(f"-s {shown}: spec {spec_name!r} has no ${{{shown}}}; its variables: {known}")
    spec = apply_overrides(substitute(spec, variables), overrides)
    meta = spec.setdefault("meta", {})
    if not isinstance(meta, dict):
        raise SpecError(f"meta: expected an object (got a {type(meta).__name__})")
    meta["variables"] = sets
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
