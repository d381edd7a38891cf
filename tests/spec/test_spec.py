"""Spec loading, ${var} substitution, overrides, validation errors and mode overrides."""

import json
import re
from pathlib import Path

import pytest

from hlrp_lab.components.encoder import ENCODERS
from hlrp_lab.components.quantizer import QUANTIZERS
from hlrp_lab.data.sources import DATA_SOURCES
from hlrp_lab.experiment.build import dry_build
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.registry import Registry
from hlrp_lab.spec.check import check_spec
from hlrp_lab.spec.spec_util import (
    override_mode,
    parse_mode,
    parse_sets,
    resolve_spec,
    substitute,
)
from hlrp_lab.stages import STAGES

LAQ_SPECS = Path(__file__).parents[2] / "specs" / "laq.json"
LAQ_FAMILIES = STAGES.config_class("laq", "stage").families


def listed(names) -> str:
    """A pattern for the comma-separated list of ``names`` an error message shows."""
    return re.escape(", ".join(names))


def registered(registry: Registry) -> str:
    """A pattern for the list of names a registry's error message shows."""
    return f"registered: {listed(registry.names())}$"


def base_spec() -> dict:
    return json.loads(LAQ_SPECS.read_text())["laq_debug"]


def write_specs(tmp_path: Path, specs: dict) -> Path:
    path = tmp_path / "specs.json"
    path.write_text(json.dumps(specs))
    return path


def test_parse_sets_types():
    values = parse_sets(["lr=3e-4", "name=ViTEncoder", "flag=true", "sizes=[1,2]", "train.max_step=10"])
    assert values == {"lr": 3e-4, "name": "ViTEncoder", "flag": True, "sizes": [1, 2], "train.max_step": 10}
    with pytest.raises(SpecError, match="-s lr: expected key=value"):
        parse_sets(["lr"])


def test_substitute_whole_placeholder_takes_value_type_and_partial_stays_string():
    node = {"optim": {"lr": "${lr}"}, "data": {"cache_dir": "${root}/cache"}, "list": ["${lr}"]}
    out = substitute(node, {"lr": 0.001, "root": "/scratch"})
    assert out == {"optim": {"lr": 0.001}, "data": {"cache_dir": "/scratch/cache"}, "list": [0.001]}


def test_unset_variable_names_key_path_and_flag(tmp_path):
    spec = base_spec()
    spec["optim"]["lr"] = "${lr}"
    path = write_specs(tmp_path, {"s": spec})
    with pytest.raises(SpecError, match=r"optim\.lr: variable \$\{lr\} is not set; pass -s lr=VALUE"):
        resolve_spec(path, "s", {})
    resolved = resolve_spec(path, "s", {"lr": 5e-4})
    assert resolved["optim"]["lr"] == 5e-4
    assert resolved["meta"]["variables"] == {"lr": 5e-4}


def test_unused_variable_is_an_error_listing_the_spec_variables(tmp_path):
    spec = base_spec()
    spec["optim"]["lr"] = "${lr}"
    path = write_specs(tmp_path, {"s": spec})
    with pytest.raises(SpecError, match=r"-s lrr: spec 's' has no \$\{lrr\}; its variables: lr"):
        resolve_spec(path, "s", {"lr": 1e-3, "lrr": 1})


def test_dotted_set_overrides_a_key(tmp_path):
    path = write_specs(tmp_path, {"s": base_spec()})
    spec = resolve_spec(path, "s", {"train.max_step": 7, "model.encoder.depth": 1})
    assert spec["train"]["max_step"] == 7 and spec["model"]["encoder"]["depth"] == 1
    with pytest.raises(SpecError, match="-s data.image_size.x: 'data.image_size' is not an object"):
        resolve_spec(path, "s", {"data.image_size.x": 1})


def test_unknown_spec_name_lists_names(tmp_path):
    path = write_specs(tmp_path, {"a": base_spec(), "b": base_spec()})
    with pytest.raises(SpecError, match="no spec named 'c'; specs in this file: a, b"):
        resolve_spec(path, "c", {})


def test_missing_file_and_invalid_json(tmp_path):
    with pytest.raises(SpecError, match="spec file not found: .*nope.json"):
        resolve_spec(tmp_path / "nope.json", "x", {})
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": {\n  "stage": }')
    with pytest.raises(SpecError, match=r"bad.json:2:\d+: invalid JSON"):
        resolve_spec(bad, "a", {})


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("train.max_step", "many", r"train\.max_step: Input should be a valid integer"),
        ("train.max_step", -5, r"train\.max_step: Input should be greater than 0 \(got -5\)"),
        ("train.max_stpe", 5, r"train\.max_stpe: unknown key"),
        ("train.precision", "fp8", r"train\.precision: Input should be 'auto', 'fp32' or 'bf16'"),
        ("data.val_split", 1.5, r"data\.val_split: Input should be less than 1"),
        (
            "model.encoder.name",
            "Nope",
            r"model\.encoder\.name: unknown encoder 'Nope'; " + registered(ENCODERS),
        ),
        ("model.encoder.dimm", 3, r"model\.encoder\.dimm: unknown key"),
        (
            "model.quantizer.codebook_size",
            "big",
            r"model\.quantizer\.codebook_size: Input should be a valid integer",
        ),
        (
            "model.head",
            {"name": "X"},
            r"model\.head: stage 'laq' has no such component; expected: " + listed(LAQ_FAMILIES) + "$",
        ),
        (
            "data.source.name",
            "youtube",
            r"data\.source\.name: unknown data source 'youtube'; " + registered(DATA_SOURCES),
        ),
        ("stage", "lqa", r"stage: unknown stage 'lqa'; " + registered(STAGES)),
        ("optim.name", "Adamm", r"optim\.name: unknown optimizer 'Adamm'; torch\.optim has: .*AdamW"),
        ("optim.betaz", [0.9, 0.9], r"optim\.betaz: not an argument of torch\.optim\.AdamW"),
        ("model.decoder.patch_size", 7, r"model: .*patch_size"),
    ],
)
def test_check_spec_errors_name_the_key(path, value, message):
    import pydash

    spec = pydash.set_(base_spec(), path, value)
    with pytest.raises(SpecError, match=message):
        dry_build(check_spec(spec))  # the optimizer and the model's sizes are checked by the dry build


def test_missing_component_family_lists_choices():
    spec = base_spec()
    del spec["model"]["quantizer"]
    assert LAQ_FAMILIES["quantizer"] is QUANTIZERS
    with pytest.raises(
        SpecError,
        match=r"model\.quantizer: required by stage 'laq'; one of: " + listed(QUANTIZERS.names()) + "$",
    ):
        check_spec(spec)


def test_check_spec_fills_defaults():
    spec = check_spec(base_spec())
    assert spec["train"]["grad_accum"] == 1
    assert spec["model"]["decoder"]["predict_residual"] is True
    assert spec["data"]["source"]["name"] == "procedural"
    assert check_spec(spec) == spec  # a saved spec re-validates to itself


def test_dev_mode_shrinks_the_run():
    spec = check_spec(base_spec())
    dev = override_mode(spec, "dev")
    assert dev["meta"]["max_session"] == 1
    assert dev["train"]["max_step"] == spec["train"]["dev_max_step"] == 300
    assert dev["train"]["eval_frequency"] <= 150
    assert override_mode(spec, "train") == spec
    assert spec["meta"]["max_session"] == 2  # not mutated


def test_parse_mode(tmp_path):
    assert parse_mode("dev").name == "dev" and not parse_mode("train").resume
    resumed = parse_mode(f"train@{tmp_path}")
    assert resumed.resume and resumed.run_dir == tmp_path
    with pytest.raises(SpecError, match="mode 'trian': expected one of dev, train, eval, search"):
        parse_mode("trian")
    with pytest.raises(SpecError, match="run directory .*missing does not exist"):
        parse_mode(f"train@{tmp_path / 'missing'}")
    with pytest.raises(SpecError, match="mode 'dev@x'"):
        parse_mode("dev@x")


def test_check_unresolved_keeps_string_placeholders_and_defaults_the_rest():
    from hlrp_lab.spec.check import check_unresolved

    spec = base_spec()
    spec["data"].update(cache_dir="${data_dir}", batch_size="${batch}")
    checked = check_unresolved(spec)
    assert checked["data"]["cache_dir"] == "${data_dir}" and checked["data"]["batch_size"] == 32
    spec["data"]["image_size"] = "big"  # not a placeholder: still an error
    with pytest.raises(SpecError, match="data.image_size"):
        check_unresolved(spec)
