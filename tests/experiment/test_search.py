"""Search mode: the search block is checked before Ray starts; a real Ray Tune search with ASHA on tiny
trials writes a table of every trial, the best spec (which re-runs), graphs, and the best trials' models."""

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from hlrp_lab.cli.main import app
from hlrp_lab.experiment.control import Trial
from hlrp_lab.experiment.lab import run_lab
from hlrp_lab.experiment.results import keep_models
from hlrp_lab.experiment.search import error_summary, set_ray_defaults
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.util import make_run_dir
from hlrp_lab.spec.check import check_spec
from hlrp_lab.spec.search_space import SAMPLERS, apply_sample
from hlrp_lab.spec.spec_util import Mode
from tests.conftest import tiny_spec_dict

MAX_STEP = 16
LRS = [1e-3, -1.0, 3e-3, 1e-2, 3e-2, 1e-1]  # -1: that trial fails its spec check; the others go on


def search_spec(cache: Path) -> dict:
    """The tiny spec with a search: 6 trials (a grid over lr), a component choice, ASHA at steps 4 and 8."""
    spec = tiny_spec_dict(cache)
    spec["train"].update(max_step=MAX_STEP, eval_frequency=4, log_frequency=4)
    spec["meta"]["search_scheduler"] = {"grace_period": 4, "reduction_factor": 2}
    spec["search"] = {
        "optim.lr__grid_search": LRS,
        "model.quantizer.name__choice": ["VectorQuantizer", "FSQ"],
        "model.quantizer.decay__uniform": [0.8, 0.99],  # VectorQuantizer only
    }
    return spec


def write_specs(path: Path, spec: dict, name: str = "tiny") -> Path:
    path.write_text(json.dumps({name: spec}))
    return path


# --- the search block, checked without Ray ----------------------------------------------------------------


def ray_tune_samplers() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """SAMPLERS as Ray has it: every public function of ray.tune.search.sample (but sample_from, which takes a
    Python callable) and grid_search, with their required and optional arguments from their signatures."""
    set_ray_defaults()
    from ray import tune
    from ray.tune.search import sample

    names = [
        name
        for name, fn in vars(sample).items()
        if inspect.isfunction(fn) and fn.__module__ == sample.__name__ and not name.startswith("_")
    ]
    table = {}
    for name in [*(n for n in names if n != "sample_from"), "grid_search"]:
        params = list(inspect.signature(getattr(tune, name)).parameters.values())  # called as tune.<name>
        assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params), name  # SearchKey passes them in order
        required = tuple(p.name for p in params if p.default is p.empty)
        table[name] = (required, tuple(p.name for p in params[len(required) :]))
    return table


def test_sampler_table_matches_ray_tune():
    """The ray-free table a spec is checked with is Ray's: a new sampler or a changed argument fails here."""
    assert SAMPLERS == ray_tune_samplers()


@pytest.mark.parametrize(
    ("entry", "args", "message"),
    [
        (
            "optim.lr__logrand",
            [1e-4, 1e-2],
            r"search\.optim\.lr__logrand: unknown sampler 'logrand'; ray\.tune has: uniform, ",
        ),
        (
            "optim.lrr__uniform",
            [0.1, 0.2],
            r"search\.optim\.lrr__uniform: optim\.lrr is not a key of this spec",
        ),
        ("optim.lr", [0.1, 0.2], r"search\.optim\.lr: expected dotted\.spec\.path__sampler"),
        (
            "optim.lr__uniform",
            [0.1],
            r"search\.optim\.lr__uniform: expected a list of arguments \[lower, upper\]",
        ),
        ("optim.lr__loguniform", [0, 1], r"search\.optim\.lr__loguniform: a log sampler needs lower > 0"),
        ("optim.lr__uniform", [0.2, 0.1], r"lower must be less than upper"),
        ("train.max_step__randint", [1.5, 3], r"search\.train\.max_step__randint: .* must be integers"),
        ("optim.lr__choice", [], r"search\.optim\.lr__choice: expected a non-empty list"),
        (
            "meta.max_session__choice",
            [1, 2],
            r"search\.meta\.max_session__choice: meta keys run the search and cannot be searched",
        ),
        (
            "model.quantizer.levels__choice",
            [[8, 5]],
            r"search\.model\.quantizer\.levels__choice: no quantizer of VectorQuantizer has the key 'levels'",
        ),
        (
            "model.quantizer.name__choice",
            ["VQ"],
            r"search\.model\.quantizer\.name__choice: unknown quantizer 'VQ'; registered: FSQ, ",
        ),
        ("model.quantizer.name__uniform", [0, 1], r"a component name is searched with choice or grid_search"),
    ],
)
def test_bad_search_entries_fail_naming_the_key(shard_cache, entry, args, message):
    spec = tiny_spec_dict(shard_cache)
    spec["search"] = {entry: args}
    with pytest.raises(SpecError, match=message):
        check_spec(spec)


def test_optuna_rejects_samplers_it_cannot_draw(shard_cache):
    spec = search_spec(shard_cache)
    spec["meta"]["search_algorithm"] = "optuna"
    with pytest.raises(SpecError, match=r"search\.optim\.lr__grid_search: Optuna cannot sample grid_search"):
        check_spec(spec)
    del spec["search"]["optim.lr__grid_search"]
    spec["search"]["optim.lr__loguniform"] = [1e-5, 1e-2]
    assert check_spec(spec)["search"]["optim.lr__loguniform"] == [1e-5, 1e-2]


def test_bad_search_fails_before_ray_is_imported_and_writes_nothing(tmp_path, shard_cache):
    spec = search_spec(shard_cache)
    spec["search"]["model.decoder.depthh__randint"] = [1, 3]
    spec_file = write_specs(tmp_path / "bad.json", spec)
    code = (
        "import sys; from typer.testing import CliRunner; from hlrp_lab.cli.main import app; "
        f"result = CliRunner().invoke(app, ['run', {str(spec_file)!r}, 'tiny', 'search']); "
        "print(result.exit_code, 'ray' in sys.modules); print(result.output.strip())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    status, output = out.stdout.split("\n", 1)
    assert status == "2 False"
    assert output.strip() == (
        "error: search.model.decoder.depthh__randint: no decoder of ViTDecoder has the key 'depthh'"
    )
    assert not (tmp_path / "data").exists()
    result = CliRunner().invoke(app, ["spec", "check", str(spec_file)])
    assert result.exit_code == 2 and "FAIL" in result.output and "depthh__randint" in result.output


def test_search_mode_needs_a_search_block(tmp_path, monkeypatch, shard_cache):
    monkeypatch.chdir(tmp_path)
    spec_file = write_specs(tmp_path / "specs.json", tiny_spec_dict(shard_cache))
    with pytest.raises(SpecError, match="search: spec 'tiny' has no search block"):
        run_lab(spec_file, "tiny", Mode("search"), {})
    assert not (tmp_path / "data").exists()


def test_component_choice_applies_only_the_keys_the_sampled_class_has(shard_cache):
    spec = check_spec(search_spec(shard_cache))
    values = {"model.quantizer.name": "FSQ", "model.quantizer.decay": 0.9, "model.quantizer.num_tokens": 3}
    trial, applied = apply_sample(spec, values)
    assert trial["model"]["quantizer"] == {"name": "FSQ", "num_tokens": 3}  # codebook keys dropped
    assert applied == {"model.quantizer.name": "FSQ", "model.quantizer.num_tokens": 3}
    assert "search" not in trial and check_spec(trial)["model"]["quantizer"]["levels"] == [8, 5, 5, 5]
    trial, applied = apply_sample(spec, {**values, "model.quantizer.name": "VectorQuantizer"})
    assert trial["model"]["quantizer"]["decay"] == 0.9 and trial["model"]["quantizer"]["codebook_size"] == 4
    assert applied == {**values, "model.quantizer.name": "VectorQuantizer"}
    check_spec(trial)


def test_trial_reports_the_mean_over_sessions_at_each_evaluation(tmp_path, tiny_spec):
    tiny_spec["meta"].update(
        max_session=2, spec_name="tiny", run_dir=str(make_run_dir(tmp_path, "tiny", "ts"))
    )
    reported: list[tuple[int, dict]] = []
    Trial(tiny_spec, cpus=2).run(on_eval=lambda step, row: reported.append((step, row)))
    sessions = [
        pd.read_csv(tmp_path / "tiny_ts" / "info" / f"tiny_t0_s{s}_session_metrics.csv") for s in (0, 1)
    ]
    evals = [h.dropna(subset=["val_psnr"]).set_index("step")["val_psnr"] for h in sessions]
    assert [step for step, _ in reported] == [6, 12]
    for step, row in reported:
        assert row["val_psnr"] == pytest.approx((evals[0][step] + evals[1][step]) / 2)
        assert evals[0][step] != evals[1][step]  # two seeds


# --- a real Ray Tune search ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    """Ray on this machine with 2 CPUs, shared by the searches of this module (a search joins it)."""
    set_ray_defaults()
    import ray

    ray.init("local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def searched(ray_cluster, tmp_path_factory, shard_cache) -> Path:
    """The run directory of a 6-trial search with ASHA (keeping the models of the best 2 trials), going by a
    latent-quality metric (lower is better) instead of the stage's val_psnr."""
    root = tmp_path_factory.mktemp("search")
    spec = search_spec(shard_cache)
    spec["meta"]["search_metric"] = {"name": "probe_mse", "mode": "min"}
    spec_file = write_specs(root / "specs.json", spec)
    cwd = Path.cwd()
    os.chdir(root)
    try:
        return root / run_lab(spec_file, "tiny", Mode("search"), {}, keep=2)
    finally:
        os.chdir(cwd)


@pytest.mark.slow
def test_search_table_has_every_trial_with_its_status(searched):
    table = pd.read_csv(searched / "info" / "tiny_experiment.csv")
    assert table.equals(pd.read_parquet(searched / "info" / "tiny_experiment.parquet"))
    assert sorted(table["trial"]) == list(range(6))
    assert list(table.columns[:4]) == ["trial", "status", "probe_mse", "step"]  # meta.search_metric
    assert {"optim.lr", "model.quantizer.name", "model.quantizer.decay", "error"} <= set(table.columns)
    by_trial = table.set_index("trial")
    assert list(by_trial.sort_index()["optim.lr"]) == LRS  # grid order
    failed = by_trial.loc[1]
    assert failed["status"] == "failed" and pd.isna(failed["probe_mse"])
    assert failed["error"].startswith("SpecError: optim.lr: Input should be greater than 0")
    ran = table[table["trial"] != 1]
    assert set(ran["status"]) <= {"completed", "stopped early"} and ran["error"].isna().all()
    stopped = ran[ran["status"] == "stopped early"]
    assert len(stopped) >= 1 and (stopped["step"] < MAX_STEP).all()  # ASHA cut these short
    assert (ran.loc[ran["status"] == "completed", "step"] == MAX_STEP).all()
    assert list(table["probe_mse"].dropna()) == sorted(table["probe_mse"].dropna())  # best (lowest) first
    assert ran["val_psnr"].notna().all()  # the stage's metric is still in the table
    fsq = table["model.quantizer.name"] == "FSQ"
    assert table.loc[fsq, "model.quantizer.decay"].isna().all()  # FSQ has no decay
    assert table.loc[~fsq & (table["trial"] != 1), "model.quantizer.decay"].between(0.8, 0.99).all()


@pytest.mark.slow
def test_search_writes_trial_files_graphs_and_keeps_the_best_models(searched):
    table = pd.read_csv(searched / "info" / "tiny_experiment.csv")
    for trial in table.loc[table["status"] != "failed", "trial"]:
        assert (searched / "info" / f"tiny_t{trial}_spec.json").is_file()
        assert (searched / "log" / f"tiny_t{trial}_s0.log").is_file()
        assert (searched / "ray" / "tune" / f"tiny_t{trial}" / "result.json").is_file()
    assert "Trials ranked by probe_mse (min)" in (searched / "report.html").read_text()
    kept = {int(p.name.split("_")[1][1:]) for p in (searched / "model").iterdir()}
    assert kept == set(table["trial"][:2])
    for param in ("optim_lr", "model_quantizer_name", "model_quantizer_decay"):
        for suffix in ("png", "html"):
            assert (searched / "graph" / f"tiny_experiment_graph_{param}.{suffix}").is_file()


@pytest.mark.slow
def test_best_spec_reruns_in_train_mode(searched, tmp_path, monkeypatch):
    best = pd.read_csv(searched / "info" / "tiny_experiment.csv").iloc[0]
    spec_file = searched / "info" / "tiny_best_spec.json"
    spec = json.loads(spec_file.read_text())["tiny"]
    assert spec["search"] == {} and spec["optim"]["lr"] == pytest.approx(best["optim.lr"])
    assert spec["meta"]["trial"] == 0 and spec["meta"]["random_seed"] == 7 + 1000 * int(best["trial"])
    monkeypatch.chdir(tmp_path)
    run_dir = run_lab(spec_file, "tiny", Mode("train"), {})
    rerun = json.loads((run_dir / "info" / "tiny_t0_trial_metrics.json").read_text())["mean"]
    assert rerun["step"] == MAX_STEP
    if best["status"] == "completed":  # same spec and seeds: the trial again
        assert rerun["val_psnr"] == pytest.approx(best["val_psnr"], abs=0.05)


@pytest.mark.slow
def test_ctrl_c_ends_the_search_and_writes_the_table(tmp_path, shard_cache):
    spec = search_spec(shard_cache)
    spec["train"].update(max_step=2000, eval_frequency=10, log_frequency=10)
    spec["meta"].update(max_trial=3, search_scheduler=None)
    spec["search"] = {"optim.lr__loguniform": [1e-4, 1e-2]}
    spec_file = write_specs(tmp_path / "specs.json", spec)
    process = subprocess.Popen(
        [sys.executable, "-m", "hlrp_lab", "run", str(spec_file), "tiny", "search"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # Ctrl-C in a terminal signals the whole process group
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    deadline = time.monotonic() + 240
    while not any(  # Tune has a trial's step-10 report (a log line can come before Tune has it)
        path.read_text().strip() for path in tmp_path.glob("data/tiny_*/ray/tune/*/result.json")
    ):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr[-3000:]
    assert "error: search interrupted: 0 of the" in stderr
    (run_dir,) = (tmp_path / "data").glob("tiny_*")
    table = pd.read_csv(run_dir / "info" / "tiny_experiment.csv")
    assert len(table) >= 1 and set(table["status"]) == {"interrupted"}
    assert table["step"].max() >= 10


def test_keep_models_removes_the_other_trials_files_and_tokenizer_folders(tmp_path):
    for trial in (0, 1):
        (tmp_path / f"s_t{trial}_s0_best.safetensors").write_text("weights")
        (tmp_path / f"s_t{trial}_tokenizer").mkdir()
        (tmp_path / f"s_t{trial}_tokenizer" / "tokenizer.json").write_text("{}")
    keep_models(tmp_path, "s", ranked=[1, 0], trials=[0, 1], keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s_t1_s0_best.safetensors", "s_t1_tokenizer"]


def test_a_failed_trial_is_summarised_by_its_type_and_first_line():
    assert error_summary(ValueError("bad lr\nTraceback ...")) == "ValueError: bad lr"
    assert error_summary(AssertionError()) == "AssertionError"  # a bare assert has no message
