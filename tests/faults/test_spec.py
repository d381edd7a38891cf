"""Fault and bad-input probing of the spec layer (issue #12): hostile spec names, `-s` keys the lab owns,
malformed dotted paths, non-finite and boolean numbers, unreadable spec files, and property-based tests
(hypothesis): arbitrary strings in specs and `-s` values resolve or give a one-line SpecError, never a
traceback."""

import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import pydash
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from hlrp_lab.cli.main import app
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.registry import validate_model
from hlrp_lab.spec.check import check_spec, check_unresolved
from hlrp_lab.spec.schema import LAB_KEYS, Spec
from hlrp_lab.spec.spec_util import (
    VAR_PATTERN,
    apply_overrides,
    parse_sets,
    parse_value,
    read_spec_file,
    resolve_spec,
    substitute,
)

LAQ_SPECS = Path(__file__).parents[2] / "specs" / "laq.json"
# Fast and deterministic: the same examples on every run, nothing written to a .hypothesis/ database.
PROPERTIES = settings(max_examples=150, deadline=None, derandomize=True, database=None)


def base_spec() -> dict:
    return json.loads(LAQ_SPECS.read_text())["laq_debug"]


def write_specs(path: Path, specs: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(specs))
    return path


def run_cli(cwd: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, list[str]]:
    """``hlrp-lab ARGS`` in ``cwd``: the exit code and the output lines."""
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output.strip().splitlines()


def files_under(root: Path) -> set[Path]:
    return {path.relative_to(root) for path in root.rglob("*") if path.is_file()}


# --- 1. spec names become path components; -s cannot set what the lab sets ------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../../escape", r"spec name '\.\./\.\./escape': use letters, digits"),
        ("a/b", r"spec name 'a/b': use letters"),
        (".hidden", r"spec name '\.hidden': use letters, .*not starting with '\.'"),
        ("x" * 300, r"spec name x{20}\.\.\.: 300 characters, at most 128"),
    ],
)
def test_unsafe_spec_name_is_refused_before_anything_is_written(tmp_path, monkeypatch, name, message):
    cwd = tmp_path / "a" / "b"  # data/../../escape would land in tmp_path/a
    cwd.mkdir(parents=True)
    spec_file = write_specs(tmp_path / "specs.json", {name: base_spec()})
    code, lines = run_cli(cwd, monkeypatch, "run", str(spec_file), name, "dev", "-s", "train.max_step=1")
    assert code == 2
    assert len(lines) == 1 and re.match(f"error: {message}", lines[0]), lines
    assert files_under(tmp_path) == {Path("specs.json")}
    code, lines = run_cli(cwd, monkeypatch, "spec", "show", str(spec_file), name)
    assert code == 2 and re.match(f"error: {message}", lines[0]), lines


def test_spec_check_fails_a_spec_with_an_unsafe_name(tmp_path, monkeypatch):
    spec_file = write_specs(tmp_path / "specs.json", {"../up": base_spec(), "fine.name-1": base_spec()})
    code, lines = run_cli(tmp_path, monkeypatch, "spec", "check", str(spec_file))
    assert code == 2
    assert lines[0].startswith(f"FAIL {spec_file} ../up: spec name '../up': use letters"), lines
    assert lines[1] == f"ok   {spec_file} fine.name-1"


@pytest.mark.parametrize("lab_key", LAB_KEYS)
def test_keys_the_lab_sets_cannot_be_overridden(tmp_path, lab_key):
    path = write_specs(tmp_path / "specs.json", {"s": base_spec()})
    message = rf"-s {lab_key}: {lab_key} is set by the lab when a run starts and cannot be overridden"
    with pytest.raises(SpecError, match=message):
        resolve_spec(path, "s", {lab_key: "/tmp/elsewhere"})
    with pytest.raises(SpecError, match=rf"{lab_key} is set by the lab"):  # the resume path
        apply_overrides(base_spec(), {f"{lab_key}.deeper": 1})


def test_lab_keys_are_the_documented_set_by_the_lab_keys():
    assert set(LAB_KEYS) == {
        f"meta.{k}"
        for k in (
            "spec_name",
            "spec_file",
            "mode",
            "variables",
            "run_dir",
            "experiment_ts",
            "git_sha",
            "trial",
            "session",
        )
    }


def test_run_dir_override_cannot_redirect_a_run(tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    elsewhere = tmp_path / "elsewhere"
    code, lines = run_cli(
        tmp_path / "cwd",
        monkeypatch,
        "run",
        str(LAQ_SPECS),
        "laq_debug",
        "dev",
        "-s",
        f"meta.run_dir={elsewhere}",
    )
    assert code == 2 and lines == [
        "error: -s meta.run_dir: meta.run_dir is set by the lab when a run starts and cannot be overridden"
    ]
    assert files_under(tmp_path) == set()


@pytest.mark.parametrize("key", ["a..b", ".x", "x.", "train..max_step", "."])
def test_dotted_override_with_an_empty_key_name_is_one_line(tmp_path, key):
    path = write_specs(tmp_path / "specs.json", {"s": base_spec()})
    with pytest.raises(SpecError, match=rf"^-s {re.escape(key)}: empty key name in the dotted path"):
        resolve_spec(path, "s", {key: 1})


def test_brackets_in_a_dotted_override_are_part_of_a_key_name_not_a_list_index():
    spec = apply_overrides(base_spec(), {"meta.x[10000000]": 1, "data.offsets[0]": 2})
    assert spec["meta"]["x[10000000]"] == 1 and spec["data"]["offsets"] == [1]
    with pytest.raises(SpecError, match=r"data\.offsets\[0\]: unknown key"):
        check_spec(spec)


def test_override_under_a_missing_parent_creates_it_and_the_schema_names_an_unknown_one():
    spec = apply_overrides(base_spec(), {"train.distributed.strategy": "ddp"})
    assert check_spec(spec)["train"]["distributed"] == {
        "strategy": "ddp",
        "cpu_offload": False,
        "find_unused_parameters": False,
        "timeout_s": 1800,
    }
    with pytest.raises(SpecError, match=r"train\.nope: "):
        check_spec(apply_overrides(base_spec(), {"train.nope.x": 1}))


def test_override_under_a_non_object_parent_names_it():
    with pytest.raises(SpecError, match=r"-s data\.offsets\.x: 'data\.offsets' is not an object"):
        apply_overrides(base_spec(), {"data.offsets.x": 1})


# --- 6. numbers: no infinities or NaN, no booleans where a number is expected -----------------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("optim.lr=Infinity", r"optim\.lr: Input should be a finite number \(got inf\)"),
        ("optim.lr=-Infinity", r"optim\.lr: Input should be greater than 0"),
        ("optim.lr=1e999", r"optim\.lr: Input should be a finite number \(got inf\)"),
        ("optim.lr=NaN", r"optim\.lr: Input should be greater than 0 \(got nan\)"),
        ("optim.lr=inf", r"optim\.lr: Input should be a finite number \(got inf\)"),  # the string "inf"
        ("optim.eps=Infinity", r"optim\.eps: Input should be a finite number"),  # torch.optim extra
        ("optim.eps=NaN", r"optim\.eps: Input should be a finite number \(got nan\)"),
        ("data.val_split=NaN", r"data\.val_split: Input should be less than 1 \(got nan\)"),
        ("model.decoder.dim=Infinity", r"model\.decoder\.dim: Input should be a finite number"),
        ("train.max_step=true", r"train\.max_step: Input should be a number, not a boolean \(got True\)"),
        ("meta.random_seed=true", r"meta\.random_seed: Input should be a number, not a boolean"),
        ("train.grad_clip=false", r"train\.grad_clip: Input should be a number, not a boolean"),
        ("data.offsets=[1,true]", r"data\.offsets\.1: Input should be a number, not a boolean"),
        ("model.decoder.dim=true", r"model\.decoder\.dim: Input should be a number, not a boolean"),
        ("model.quantizer.codebook_size=false", r"model\.quantizer\.codebook_size: Input should be a number"),
        ("data.source.episodes=true", r"data\.source\.episodes: Input should be a number, not a boolean"),
    ],
)
def test_non_finite_and_boolean_numbers_are_refused(tmp_path, monkeypatch, setting, message):
    code, lines = run_cli(tmp_path, monkeypatch, "run", str(LAQ_SPECS), "laq_debug", "dev", "-s", setting)
    assert code == 2
    assert len(lines) == 1 and re.match(f"error: {message}", lines[0]), lines
    assert files_under(tmp_path) == set()


def test_infinity_written_in_a_spec_file_is_refused(tmp_path):
    spec = base_spec()
    spec["search"] = {"optim.lr__loguniform": [1e-4, math.inf]}
    path = tmp_path / "specs.json"
    path.write_text(json.dumps({"s": spec}))  # Python writes Infinity, which json.loads reads back
    assert "Infinity" in path.read_text()
    with pytest.raises(
        SpecError, match=r"search\.optim\.lr__loguniform\[1\]: Input should be a finite number"
    ):
        check_spec(resolve_spec(path, "s", {}))


def test_booleans_stay_valid_for_boolean_keys_and_whole_floats_for_integers():
    spec = pydash.set_(base_spec(), "model.decoder.predict_residual", False)
    spec = pydash.set_(spec, "optim.amsgrad", True)  # a torch.optim argument, passed through
    spec = pydash.set_(spec, "train.max_step", 1e3)  # -s train.max_step=1e3
    checked = check_spec(spec)
    assert checked["model"]["decoder"]["predict_residual"] is False and checked["optim"]["amsgrad"] is True
    assert checked["train"]["max_step"] == 1000 and isinstance(checked["train"]["max_step"], int)
    with pytest.raises(SpecError, match=r"train\.max_step: Input should be a valid integer, got a number"):
        check_spec(pydash.set_(base_spec(), "train.max_step", 1000.5))


# --- 7. messages that say what is wrong ----------------------------------------------------------------


def test_placeholder_in_a_key_name_names_the_key(tmp_path):
    spec = base_spec()
    spec["train"]["${k}"] = 1
    path = write_specs(tmp_path / "specs.json", {"s": spec})
    message = r"^train\.\$\{k\}: a \$\{var\} placeholder in a key name is not supported"
    for sets in ({"k": "max_step"}, {}):
        with pytest.raises(SpecError, match=message):
            resolve_spec(path, "s", sets)
    with pytest.raises(SpecError, match=message):
        check_unresolved(spec)


def test_directory_as_spec_file(tmp_path, monkeypatch):
    with pytest.raises(SpecError, match=r"is a directory, expected a JSON spec file"):
        read_spec_file(tmp_path)
    code, lines = run_cli(tmp_path, monkeypatch, "run", ".", "laq_debug")
    assert code == 2 and lines == ["error: . is a directory, expected a JSON spec file"]


def test_non_utf8_spec_file(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('{"s": {"stage": "caf\u00e9"}}'.encode("latin-1"))
    with pytest.raises(
        SpecError, match=r"latin1\.json: not UTF-8 text \(byte 20\); save the spec file as UTF-8"
    ):
        read_spec_file(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its permissions")
def test_unreadable_spec_file(tmp_path):
    path = write_specs(tmp_path / "specs.json", {"s": base_spec()})
    path.chmod(0)
    with pytest.raises(SpecError, match=r"specs\.json: cannot read the spec file: Permission denied"):
        read_spec_file(path)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_spec_file_whose_read_fails():
    with pytest.raises(SpecError, match=r"^/proc/self/mem: cannot read the spec file: Input/output error$"):
        read_spec_file("/proc/self/mem")  # a regular file that every read fails on, even for root


@pytest.mark.parametrize(
    "text", ['{"s": {"x": ' + "1" * 5000 + "}}", '{"s": ' + "[" * 100_000 + "]" * 100_000 + "}"]
)
def test_spec_file_python_cannot_hold(tmp_path, text):
    path = tmp_path / "huge.json"
    path.write_text(text)
    with pytest.raises(SpecError, match=r"huge\.json: a number too long or nesting too deep"):
        read_spec_file(path)


@pytest.mark.parametrize("raw", ["1" * 5000, "[" * 100_000])
def test_set_value_python_cannot_hold(raw):
    with pytest.raises(SpecError, match=r"^-s x: the value is too long a number or nested too deeply"):
        parse_sets([f"x={raw}"])


def test_long_bad_value_is_shortened_in_the_message():
    with pytest.raises(SpecError) as err:
        check_spec(pydash.set_(base_spec(), "train.max_step", "9x" * 5000))
    assert len(str(err.value)) < 200 and str(err.value).endswith("...)")


# --- 2. property-based: arbitrary strings resolve or raise SpecError --------------------------------------

VARIABLE = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,7}", fullmatch=True)
JSON_SCALAR = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSON_VALUE = st.recursive(
    JSON_SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
TEMPLATE = st.lists(
    st.one_of(
        st.text(max_size=8), VARIABLE.map(lambda v: f"${{{v}}}"), st.sampled_from(["${", "}", "$", "{}"])
    ),
    max_size=6,
).map("".join)
DOTTED_KEY = st.lists(
    st.one_of(
        st.sampled_from(["train", "optim", "meta", "data", "model", "encoder", "max_step", "lr", "x", ""]),
        st.text(max_size=6),
    ),
    min_size=1,
    max_size=4,
).map(".".join)


def walk(node: Any):
    """Every (value) in nested dicts and lists, leaves included."""
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from walk(child)


@PROPERTIES
@given(st.text())
def test_parse_value_is_json_or_the_string_itself(raw):
    try:
        value = parse_value(raw)
    except SpecError as err:
        assert "\n" not in str(err)
        return
    try:
        expected = json.loads(raw)
    except json.JSONDecodeError:
        assert value == raw
    else:
        assert json.dumps(value) == json.dumps(expected)


@PROPERTIES
@given(st.lists(st.text(max_size=30), max_size=5))
def test_parse_sets_takes_any_arguments(pairs):
    try:
        values = parse_sets(pairs)
    except SpecError as err:
        assert str(err).startswith("-s ") and "\n" not in str(err)
        return
    assert set(values) == {pair.partition("=")[0] for pair in pairs}


@PROPERTIES
@given(TEMPLATE, st.dictionaries(VARIABLE, JSON_SCALAR, max_size=4))
def test_substitute_replaces_each_placeholder_or_names_the_missing_one(template, variables):
    try:
        out = substitute({"k": template}, variables)["k"]
    except SpecError as err:
        missing = [name for name in VAR_PATTERN.findall(template) if name not in variables]
        assert missing and str(err) == f"k: variable ${{{missing[0]}}} is not set; pass -s {missing[0]}=VALUE"
        return
    whole = VAR_PATTERN.fullmatch(template)
    if whole:
        assert out is variables[whole.group(1)]
    else:
        assert out == VAR_PATTERN.sub(lambda m: str(variables[m.group(1)]), template)
        assert not set(VAR_PATTERN.findall(template)) - set(variables)


@PROPERTIES
@given(TEMPLATE, st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=4))
def test_resolve_spec_with_any_placeholder_text_and_sets(tmp_path_factory, template, raw_sets):
    spec = base_spec()
    spec["data"]["cache_dir"] = template
    spec["train"][template] = 1  # a key name too
    path = write_specs(tmp_path_factory.mktemp("spec") / "specs.json", {"s": spec})
    sets = {key: parse_value(raw) for key, raw in raw_sets.items()}
    try:
        resolved = resolve_spec(path, "s", sets)
    except SpecError as err:
        assert "\n" not in str(err)
        return
    assert not VAR_PATTERN.search(template)  # a placeholder in the key name is always refused
    assert json.dumps(resolved["meta"]["variables"]) == json.dumps(sets)


@PROPERTIES
@given(DOTTED_KEY, JSON_VALUE)
def test_apply_overrides_sets_exactly_the_dotted_key_or_refuses(key, value):
    spec = base_spec()
    try:
        out = apply_overrides(spec, {key: value})
    except SpecError as err:
        assert str(err).startswith("-s ") and "\n" not in str(err)
        return
    names = key.split(".")
    node = out
    for name in names[:-1]:
        node = node[name]
    assert node[names[-1]] is value
    assert spec == base_spec()  # not mutated


@PROPERTIES
@given(
    st.sampled_from(
        [
            "optim.lr",
            "optim.eps",
            "train.max_step",
            "train.grad_clip",
            "data.val_split",
            "data.offsets",
            "meta.random_seed",
            "meta.search_resources.cpu",
            "rollout.tasks",
            "search",
        ]
    ),
    st.text(max_size=12) | st.sampled_from(["Infinity", "-Infinity", "NaN", "1e999", "true", "false", "1e3"]),
)
def test_any_set_value_validates_to_finite_non_boolean_numbers_or_refuses(key, raw):
    spec = pydash.set_(base_spec(), key, parse_value(raw))
    try:
        checked = validate_model(Spec, spec, "").model_dump()
    except SpecError as err:
        assert str(err).startswith(key.split(".")[0]) and "\n" not in str(err)
        return
    assert all(not isinstance(v, float) or math.isfinite(v) for v in walk(checked))
    numbers = [checked["optim"]["lr"], checked["train"]["max_step"], checked["meta"]["random_seed"]]
    assert not any(isinstance(v, bool) for v in numbers)


@PROPERTIES
@given(st.text(max_size=12), JSON_SCALAR)
def test_any_key_name_in_a_spec_is_checked_in_one_line(name, value):
    spec = base_spec()
    spec["train"][name] = value
    spec["model"]["decoder"][name] = value
    try:
        checked = check_spec(spec)
    except SpecError as err:
        assert "\n" not in str(err)
        return
    assert name in checked["train"] and checked["train"][name] == value  # only a real key can pass


@PROPERTIES
@given(
    st.sampled_from(["stage", "data", "model", "optim", "train", "meta", "rollout", "search", "extra"]),
    JSON_VALUE,
    st.dictionaries(DOTTED_KEY, JSON_VALUE, max_size=2),
)
def test_any_section_and_overrides_resolve_and_check_or_refuse(tmp_path_factory, section, value, sets):
    spec = base_spec()
    spec[section] = value
    path = write_specs(tmp_path_factory.mktemp("spec") / "specs.json", {"s": spec})
    try:
        checked = check_spec(resolve_spec(path, "s", sets))
    except SpecError as err:
        assert "\n" not in str(err)
        return
    assert all(not isinstance(v, float) or math.isfinite(v) for v in walk(checked))
