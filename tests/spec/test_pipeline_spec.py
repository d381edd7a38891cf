"""Pipeline specs without torch: the shipped pipelines validate, `-s` fills ${var} and sets step keys,
`${steps.NAME}` becomes an earlier step's run, and every bad pipeline is one line naming the key and the fix,
from `hlrp-lab pipeline` before anything is written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hlrp_lab.cli.main import app
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.spec.pipeline import check_steps, read_pipeline, step_mode, step_sets

ROOT = Path(__file__).parents[2]
PIPELINES = ROOT / "specs" / "pipeline.json"


def chain() -> dict:
    """A valid pipeline over the shipped debug specs."""
    return {
        "steps": {
            "laq": {"spec_file": f"{ROOT}/specs/laq.json", "spec_name": "laq_debug", "seeds": 2},
            "foundation": {
                "spec_file": f"{ROOT}/specs/foundation.json",
                "spec_name": "vla_debug",
                "sets": {"data.source.laq": "${steps.laq}", "train.max_step": "${vla_steps}"},
            },
            "foundation_eval": {"mode": "eval", "of": "foundation"},
        },
        "seeds": 3,
        "report": {"metrics": ["val_psnr"], "anchors": {"paper": {"val_psnr": 30.0}}},
    }


def write(tmp_path: Path, pipeline: dict) -> Path:
    path = tmp_path / "pipelines.json"
    path.write_text(json.dumps({"chain": pipeline}))
    return path


ARMS = ("finetune", "bc_scratch", "laq_encoder")  # the study's three arms
ARMS_K5_GPU = ("finetune_k5", "bc_scratch_k5")  # study_mw_gpu: with and without latent pretraining


def test_the_shipped_pipelines_validate_with_their_steps_specs():
    for name, sets in [("chain_debug", {}), ("study_mw", {"shards": "data/shards/mw"})]:
        pipeline = read_pipeline(PIPELINES, name, sets)
        check_steps(pipeline)
    arms = [f"{arm}_k{k}{end}" for k in (1, 5, 10) for arm in ARMS for end in ("", "_eval")]
    assert list(pipeline.steps) == ["laq", "foundation", *arms]
    assert step_sets(pipeline, "foundation", {"laq": "data/laq_mw_cpu_2026_01_01_000000"}) == {
        "shards": "data/shards/mw",
        "data.source.laq": "data/laq_mw_cpu_2026_01_01_000000",
    }
    finetune = step_sets(pipeline, "finetune_k1", {"foundation": "data/vla"})
    assert finetune["meta.max_session"] == 3 and finetune["data.max_episodes"] == 1
    assert finetune["rollout.episodes"] == 10  # the pipeline's default of ${episodes}
    assert pipeline.steps["laq"].spec_name == "laq_mw_cpu"  # the default of ${laq_spec}
    searched = {"shards": "data/shards/mw", "laq_spec": "laq_mw_searched", "foundation.data.offsets": [8]}
    with_search = read_pipeline(PIPELINES, "study_mw", searched)
    check_steps(with_search)  # the searched LAQ labels pairs (t, t+8): the foundation follows
    assert with_search.steps["laq"].spec_name == "laq_mw_searched"
    assert step_sets(with_search, "foundation", {"laq": "data/laq"})["data.offsets"] == [8]
    fewer = read_pipeline(PIPELINES, "study_mw", {"shards": "data/shards/mw", "episodes": 5})
    assert step_sets(fewer, "bc_scratch_k10", {})["rollout.episodes"] == 5  # -s wins over the default
    gpu = read_pipeline(PIPELINES, "study_mw_gpu", {"shards": "data/shards/mw"})
    check_steps(gpu)
    vlas = {
        step_sets(gpu, name, {"foundation": "data/vla"})["model.vla"]["pretrained"] for name in ARMS_K5_GPU
    }
    assert vlas == {"HuggingFaceTB/SmolVLM-256M-Instruct"}  # both arms start from the same pretrained VLM
    debug = read_pipeline(PIPELINES, "chain_debug", {})
    assert debug.steps["bc_debug"].spec_name == "ft_debug" and debug.steps["bc_debug"].sets == {
        "train.init_from": None
    }


def test_sets_fill_variables_step_keys_seeds_and_earlier_runs(tmp_path):
    path = write(tmp_path, chain())
    pipeline = read_pipeline(path, "chain", {"vla_steps": 40, "laq.train.max_step": 7})
    assert step_sets(pipeline, "laq", {}) == {"train.max_step": 7, "meta.max_session": 2}  # the step's seeds
    runs = {"laq": "data/laq_debug_2026_01_01_000000"}
    assert step_sets(pipeline, "foundation", runs) == {
        "data.source.laq": "data/laq_debug_2026_01_01_000000",
        "train.max_step": 40,  # a whole-string ${var} keeps its type
        "meta.max_session": 3,  # the pipeline's seeds
    }
    assert step_mode(pipeline.steps["laq"], "dev") == "dev"
    assert step_mode(pipeline.steps["foundation_eval"], "dev") == "eval"
    seeded = read_pipeline(path, "chain", {"vla_steps": 40}, seeds=5)
    assert step_sets(seeded, "laq", {})["meta.max_session"] == 5
    assert seeded.steps["foundation_eval"].seeds is None
    check_steps(pipeline)


def edit(change: str):
    """A function that breaks a copy of ``chain()`` as ``change`` says."""
    return {
        "unknown step key": lambda p: p["steps"]["laq"].update(spec="x"),
        "unknown pipeline key": lambda p: p.update(step={}),
        "later step": lambda p: p["steps"]["laq"].update(sets={"train.init_from": "${steps.foundation}"}),
        "unknown step": lambda p: p["steps"]["foundation"]["sets"].update(
            {"data.source.laq": "${steps.lqa}"}
        ),
        "eval of nothing": lambda p: p["steps"]["foundation_eval"].update(of="nope"),
        "eval with sets": lambda p: p["steps"]["foundation_eval"].update(sets={"train.max_step": 3}),
        "eval without of": lambda p: p["steps"]["foundation_eval"].pop("of"),
        "of without eval": lambda p: p["steps"]["foundation"].update(of="laq"),
        "no spec name": lambda p: p["steps"]["laq"].pop("spec_name"),
        "dotted step name": lambda p: p["steps"].update({"a.b": {"spec_file": "x", "spec_name": "y"}}),
        "bad mode": lambda p: p["steps"]["laq"].update(mode="fast"),
        "zero seeds": lambda p: p.update(seeds=0),
        "boolean seeds": lambda p: p["steps"]["laq"].update(seeds=True),
        "anchor metric": lambda p: p["report"]["anchors"]["paper"].update(success_rate=0.5),
        "no steps": lambda p: p.update(steps={}),
        "bad stage key": lambda p: p["steps"]["foundation"]["sets"].update({"train.max_stepp": 3}),
        "missing spec": lambda p: p["steps"]["laq"].update(spec_name="laq_nope"),
    }[change]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            "unknown step key",
            "steps.laq.spec: unknown key; a step takes spec_file, spec_name, mode, of, sets, seeds",
        ),
        ("unknown pipeline key", "step: unknown key; a pipeline takes variables, steps, seeds, report"),
        (
            "later step",
            "steps.laq.sets.train.init_from: ${steps.foundation} is not an earlier step; earlier steps: none",
        ),
        (
            "unknown step",
            "steps.foundation.sets.data.source.laq: ${steps.lqa} is not an earlier step; earlier steps: laq",
        ),
        ("eval of nothing", "steps.foundation_eval.of: 'nope' is not an earlier training step"),
        (
            "eval with sets",
            "steps.foundation_eval.sets: an eval step evaluates the run of step 'foundation' as it was trained",
        ),
        ("eval without of", "steps.foundation_eval.of: an eval step names the earlier step whose run it"),
        ("of without eval", "steps.foundation.of: only an eval step (mode eval) names a run to evaluate"),
        ("no spec name", "steps.laq.spec_name: required key is missing"),
        ("dotted step name", "steps.a.b: a step name is 1-64 letters, digits, '_' and '-'"),
        ("bad mode", "steps.laq.mode: Input should be 'dev', 'train', 'search' or 'eval'"),
        ("zero seeds", "seeds: Input should be greater than 0"),
        ("boolean seeds", "steps.laq.seeds: Input should be a number, not a boolean"),
        ("anchor metric", "report.anchors: 'success_rate' is not in report.metrics"),
        ("no steps", "steps: Dictionary should have at least 1 item"),
        ("bad stage key", "steps.foundation (vla_debug): train.max_stepp: unknown key"),
        ("missing spec", f"steps.laq (laq_nope): {ROOT}/specs/laq.json: no spec named 'laq_nope'"),
    ],
)
def test_a_bad_pipeline_is_one_line_naming_the_key(tmp_path, change, message):
    pipeline = chain()
    edit(change)(pipeline)
    with pytest.raises(SpecError) as raised:
        sets = {"vla_steps": 40} if "${vla_steps}" in json.dumps(pipeline) else {}
        check_steps(read_pipeline(write(tmp_path, pipeline), "chain", sets))
    assert message in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({}, "variable ${vla_steps} is not set; pass -s vla_steps=VALUE"),
        ({"vla_steps": 4, "lr": 1}, "-s lr: pipeline 'chain' has no ${lr}; its variables: vla_steps"),
        ({"vla_steps": 4, "vla.train.max_step": 1}, "-s vla.train.max_step: 'vla' is not a step; steps: laq"),
        (
            {"vla_steps": 4, "foundation_eval.x": 1},
            "step 'foundation_eval' evaluates the run of 'foundation'",
        ),
    ],
)
def test_bad_set_values_name_the_fix(tmp_path, sets, message):
    with pytest.raises(SpecError) as raised:
        read_pipeline(write(tmp_path, chain()), "chain", sets)
    assert message in str(raised.value)


def test_the_command_fails_before_writing_anything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, chain())
    cases = [
        (
            ["chain", "-s", "vla_steps=4", "--force", "nope"],
            "--force nope: not a step; steps: laq, foundation",
        ),
        (["chain", "search", "-s", "vla_steps=4"], "mode 'search': a pipeline runs in train"),
        (["nope"], "no pipeline named 'nope'; pipelines in this file: chain"),
        (
            ["chain", "-s", "vla_steps=4", "-s", "foundation.model.vla.name=Nope"],
            "steps.foundation (vla_debug)",
        ),
    ]
    for args, message in cases:
        result = CliRunner().invoke(app, ["pipeline", str(path), *args])
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: ") and message in result.output, result.output
        assert result.output.count("\n") == 1
    assert not (tmp_path / "data").exists()


def test_pipeline_help_and_checks_import_neither_torch_nor_ray():
    code = (
        "import sys; from typer.testing import CliRunner; from hlrp_lab.cli.main import app; "
        "from hlrp_lab.spec.pipeline import check_steps, read_pipeline; "
        "assert CliRunner().invoke(app, ['pipeline', '--help']).exit_code == 0; "
        "check_steps(read_pipeline('specs/pipeline.json', 'study_mw', {'shards': 'data/shards/mw'})); "
        "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_spec_check_checks_pipelines_too(tmp_path):
    bad = chain()
    bad["steps"]["foundation"]["sets"]["train.max_stepp"] = 3
    path = tmp_path / "pipelines.json"
    defaulted = {"variables": {"vla_steps": 40}, **chain()}
    path.write_text(json.dumps({"good": chain(), "bad": bad, "defaulted": defaulted}))
    result = CliRunner().invoke(app, ["spec", "check", str(path)])
    assert result.exit_code == 2
    assert f"ok   {path} good  (needs -s vla_steps=...)" in result.output
    assert f"ok   {path} defaulted\n" in result.output  # its variables block fills ${vla_steps}
    assert f"FAIL {path} bad: steps.foundation (vla_debug): train.max_stepp: unknown key" in result.output
