"""`hlrp-lab pipeline` for real on tiny specs: LAQ -> foundation (labelled by that LAQ run) -> finetune (from
that foundation run) -> its eval. The steps run in order through the lab, a second invocation reuses every
run, a changed step retrains itself and what follows, a failing step stops the pipeline with one line, and
the study holds each run's metrics."""

import json
import os
import re
from pathlib import Path

import pytest
from plotly.offline import get_plotlyjs
from typer.testing import CliRunner

from hlrp_lab.cli.main import app
from hlrp_lab.experiment.report.html import number
from tests.conftest import tiny_spec_dict

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = ["laq", "foundation", "finetune", "finetune_eval"]
TINY_VLA = {
    "name": "SmolVLM",
    "config": {
        "vision_config": {"image_size": 32, "hidden_size": 32, "num_hidden_layers": 1},
        "text_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
    },
}
LATENT = {"name": "CodeQueries", "num_tokens": 2, "codebook_size": 4}  # the tiny LAQ's codes
METRICS = ["val_psnr", "val_token_acc", "val_action_mse"]


def stage_specs(cache: Path) -> dict:
    """Tiny LAQ, foundation and finetune specs; their references say `latest:`, which the pipeline replaces."""
    laq = tiny_spec_dict(cache)
    laq["meta"]["max_session"] = 2  # the pipeline's seeds (1) win
    vla = tiny_spec_dict(cache)
    vla.update(stage="foundation", model={"vla": TINY_VLA, "latent_head": LATENT})
    vla["data"].update(source={"name": "label", "laq": "latest:laq"}, pairs="pair")
    vla["train"].update(max_step=4, eval_frequency=4, log_frequency=2)
    ft = tiny_spec_dict(cache)
    ft.update(
        stage="finetune",
        model={
            "vla": TINY_VLA,
            "latent_head": LATENT,
            "action_head": {"name": "MLPRegression", "hidden": 32},
        },
    )
    ft["data"].update(pairs="pair", max_episodes=3)
    ft["train"].update(max_step=4, eval_frequency=4, log_frequency=2, init_from="latest:vla")
    return {"laq": laq, "vla": vla, "ft": ft}


PIPELINE = {
    "steps": {
        "laq": {"spec_file": "specs.json", "spec_name": "laq"},
        "foundation": {
            "spec_file": "specs.json",
            "spec_name": "vla",
            "sets": {"data.source.laq": "${steps.laq}"},
        },
        "finetune": {
            "spec_file": "specs.json",
            "spec_name": "ft",
            "sets": {"train.init_from": "${steps.foundation}"},
        },
        "finetune_eval": {"mode": "eval", "of": "finetune"},
    },
    "seeds": 1,
    "report": {"metrics": METRICS, "anchors": {"paper <b>|</b>": {"val_action_mse": 0.25}}},
}


def pipeline(*args: str):
    """``hlrp-lab pipeline pipelines.json chain ARGS`` in this process, as a user runs it."""
    return CliRunner().invoke(app, ["pipeline", "pipelines.json", "chain", *args])


def runs() -> set[str]:
    """The stage run directories under data/ (not the pipelines')."""
    return {p.name for p in Path("data").iterdir() if not p.name.startswith("chain_")}


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "pipeline.json").read_text())


def pipeline_dir(result) -> Path:
    return Path(re.search(r"pipeline directory: (\S+)", result.output)[1])


@pytest.fixture(scope="module")
def first(tmp_path_factory, shard_cache):
    """The first run of the pipeline, in a working directory of its own."""
    root = tmp_path_factory.mktemp("pipeline")
    cwd = Path.cwd()
    os.chdir(root)
    try:
        Path("specs.json").write_text(json.dumps(stage_specs(shard_cache)))
        Path("pipelines.json").write_text(json.dumps({"chain": PIPELINE}))
        result = pipeline()
        assert result.exit_code == 0, result.output
        yield result
    finally:
        os.chdir(cwd)


@pytest.fixture
def workdir(first):
    cwd = Path.cwd()
    os.chdir(pipeline_dir(first).parent.parent)
    yield
    os.chdir(cwd)


def test_the_steps_run_in_order_each_on_the_run_before_it(first, workdir):
    steps = record(pipeline_dir(first))["steps"]
    assert [s["step"] for s in steps] == STEPS and {s["used"] for s in steps} == {"new"}
    laq, vla, ft, ft_eval = (Path(s["run_dir"]) for s in steps)
    started = [run.name.partition("_")[2] for run in (laq, vla, ft)]  # {spec}_{timestamp}
    assert started == sorted(started) and ft_eval == ft  # made in order; the eval is of the finetune run
    saved = {
        s["step"]: json.loads((Path(s["run_dir"]) / "info" / f"{s['spec_name']}_spec.json").read_text())
        for s in steps
    }
    assert saved["foundation"]["vla"]["data"]["source"]["laq"] == str(laq)  # ${steps.laq}, not latest:laq
    assert saved["finetune"]["ft"]["train"]["init_from"] == str(vla)
    assert saved["laq"]["laq"]["meta"]["max_session"] == 1  # seeds
    assert (ft / "info" / "ft_t0_eval_metrics.json").is_file()
    for run in (laq, vla, ft):
        status = json.loads((run / "info" / "status.json").read_text())
        assert status["status"] == "completed" and len(status["fingerprint"]) == 64
    assert record(pipeline_dir(first))["status"] == "completed"


def test_the_study_holds_each_runs_metrics(first, workdir):
    folder = pipeline_dir(first)
    markdown, html = (folder / "study.md").read_text(), (folder / "study.html").read_text()
    assert f"{markdown}pipeline directory: {folder}\n" in first.output  # printed at the end
    rows = {line.split(" | ")[0].removeprefix("| "): line.split(" | ") for line in markdown.splitlines()[2:]}
    assert (
        markdown.splitlines()[0]
        == "| step | spec | mode | run | used | seeds | " + " | ".join(METRICS) + " |"
    )
    for step in record(folder)["steps"]:
        run = Path(step["run_dir"])
        kind = "eval_metrics" if step["mode"] == "eval" else "trial_metrics"
        mean = json.loads((run / "info" / f"{step['spec_name']}_t0_{kind}.json").read_text())["mean"]
        row = rows[step["step"]]
        assert row[1:6] == [step["spec_name"], step["mode"], run.name, "new", "1"]
        for column, metric in enumerate(METRICS, start=6):
            value = number(mean[metric]) if metric in mean else "–"
            assert row[column].removesuffix(" |") == value, (step["step"], metric)
            if metric in mean:
                assert f"<td>{value}</td>" in html
    assert rows["paper <b>\\|</b>"][4:] == ["reference", "", "–", "–", "0.25 |"]
    assert "paper &lt;b&gt;|&lt;/b&gt;" in html and "<b>|" not in html  # escaped
    assert html.count('<div class="curve">') == len(METRICS) and html.count(get_plotlyjs()[:300]) == 1
    assert 'href="../' + Path(record(folder)["steps"][0]["run_dir"]).name + '/report.html"' in html


def test_a_second_run_reuses_every_step(first, workdir):
    before = runs()
    result = pipeline()
    assert result.exit_code == 0, result.output
    assert runs() == before  # no new run directory
    again, earlier = record(pipeline_dir(result))["steps"], record(pipeline_dir(first))["steps"]
    assert [s["used"] for s in again] == ["reused"] * 4
    assert [s["run_dir"] for s in again] == [s["run_dir"] for s in earlier]
    log = (pipeline_dir(result) / "pipeline.log").read_text()
    assert f"step laq: reused {again[0]['run_dir']}" in log and "reused the evaluation of" in log
    assert (pipeline_dir(result) / "study.md").read_text().count(" | reused | ") == 4


def test_force_runs_a_step_again(first, workdir):
    result = pipeline("--force", "finetune_eval")
    assert result.exit_code == 0, result.output
    assert [s["used"] for s in record(pipeline_dir(result))["steps"]] == ["reused"] * 3 + ["new"]


def test_a_failing_step_stops_the_pipeline_with_one_line(first, workdir):
    before = {name: sorted(p.name for p in (Path("data") / name).rglob("*")) for name in runs()}
    result = pipeline("-s", "foundation.optim.lr=1e30", "-s", "foundation.optim.warmup_steps=0")
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    failed = sorted(runs() - set(before))
    assert len(failed) == 1 and failed[0].startswith("vla_")  # the foundation's run, and nothing after it
    assert errors == [result.output.splitlines()[-1]]
    assert errors[0].startswith("error: step foundation (vla) failed: NonFiniteLossError: ")
    assert f"its run directory: data/{failed[0]};" in errors[0]
    assert json.loads((Path("data") / failed[0] / "info" / "status.json").read_text())["status"] == "failed"
    pipelines = sorted(Path("data").glob("chain_*"), key=lambda p: p.stat().st_mtime)
    written = record(pipelines[-1])
    assert written["status"] == "failed" and written["failed"]["run_dir"] == f"data/{failed[0]}"
    assert [s["used"] for s in written["steps"]] == ["reused"]  # the LAQ run, intact:
    assert {name: sorted(p.name for p in (Path("data") / name).rglob("*")) for name in before} == before


@pytest.mark.slow
def test_changing_one_step_retrains_it_and_the_steps_after_it(first, workdir):
    earlier = record(pipeline_dir(first))["steps"]
    result = pipeline("-s", "foundation.train.max_step=3")
    assert result.exit_code == 0, result.output
    steps = record(pipeline_dir(result))["steps"]
    assert [s["used"] for s in steps] == ["reused", "new", "new", "new"]
    assert steps[0]["run_dir"] == earlier[0]["run_dir"]
    assert all(s["run_dir"] != e["run_dir"] for s, e in zip(steps[1:3], earlier[1:3], strict=True))
    assert all(Path(e["run_dir"]).is_dir() for e in earlier)  # the earlier runs stay
    vla = json.loads((Path(steps[1]["run_dir"]) / "info" / "vla_t0_trial_metrics.json").read_text())
    assert vla["mean"]["step"] == 3
