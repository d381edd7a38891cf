"""``hlrp-lab plot`` and ``plot-list`` on real tiny runs: the graph files and their traces, run resolution,
the trial a multi-trial run plots, one-line errors, and no torch or ray in the process."""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydash
import pytest
from typer.testing import CliRunner

from hlrp_lab.cli.main import app
from hlrp_lab.experiment.experiment import Experiment
from hlrp_lab.experiment.lab import run_lab
from hlrp_lab.lib.util import make_run_dir, write_json
from hlrp_lab.spec.check import check_spec
from hlrp_lab.spec.spec_util import Mode
from tests.conftest import tiny_spec_dict


def tiny(cache: Path, lr: float = 1e-3, sessions: int = 1) -> dict:
    spec = tiny_spec_dict(cache)
    spec["train"].update(eval_frequency=3)
    spec["optim"]["lr"] = lr
    spec["meta"]["max_session"] = sessions
    return spec


def run_two_trials(cache: Path) -> Path:
    """A run of two trials with an experiment table, as a search writes it (without Ray); trial 1 trains
    4 times longer, so it ranks first."""
    spec = check_spec(tiny(cache))
    spec["train"]["max_step"] = 6
    run_dir = make_run_dir(Path("data"), "multi", "2020_01_01_000000")
    spec["meta"].update(spec_name="multi", run_dir=str(run_dir), mode="search")
    write_json(run_dir / "info" / "multi_spec.json", {"multi": spec})
    longer = pydash.set_(pydash.clone_deep(spec), "train.max_step", 24)
    Experiment(spec).run([spec, longer])
    return run_dir


@pytest.fixture(scope="module")
def root(tmp_path_factory, shard_cache) -> Path:
    """A directory with data/: pair (2 sessions), solo (1 session) and multi (2 trials, 1 session each)."""
    root = tmp_path_factory.mktemp("runs")
    specs = {"pair": tiny(shard_cache, sessions=2), "solo": tiny(shard_cache, lr=3e-3)}
    (root / "specs.json").write_text(json.dumps(specs))
    cwd = Path.cwd()
    os.chdir(root)
    try:
        for name in specs:
            run_lab(Path("specs.json"), name, Mode("train"), {})
        run_two_trials(shard_cache)
    finally:
        os.chdir(cwd)
    return root


def run_path(root: Path, spec_name: str) -> Path:
    (path,) = (root / "data").glob(f"{spec_name}_*")
    return path


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def figure(html: Path) -> tuple[list[dict], dict]:
    """The traces and layout of the figure plotly wrote into ``html``."""
    text, decoder = html.read_text(), json.JSONDecoder()
    traces, end = decoder.raw_decode(text, text.index("[", text.index("Plotly.newPlot(")))
    layout, _ = decoder.raw_decode(text, text.index("{", end))
    return traces, layout


def trace_names(html: Path) -> list[str]:
    return [trace["name"] for trace in figure(html)[0]]


def values(array: list | dict) -> np.ndarray:
    """A plotly data array: a list, or a typed array {dtype, bdata}."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"])
    return np.asarray(array)


def test_plot_draws_the_mean_of_each_run_and_a_band_for_several_sessions(root, monkeypatch):
    monkeypatch.chdir(root)
    result = invoke("plot", "-f", "pair,solo")
    assert result.exit_code == 0, result.output
    stem = Path("data/plots/val_psnr_pair_vs_solo")
    assert f"wrote {stem}.png" in result.output and f"wrote {stem}.html" in result.output
    assert "trial 0, 2 sessions" in result.output and "trial 0, 1 session\n" in result.output
    assert (root / f"{stem}.png").read_bytes().startswith(b"\x89PNG")
    (band, pair, solo), layout = figure(root / f"{stem}.html")
    assert [band["name"], pair["name"], solo["name"]] == ["pair ± std", "pair", "solo"]
    assert band["fill"] == "toself" and "fill" not in pair and "fill" not in solo
    info = run_path(root, "pair") / "info"
    sessions = [pd.read_csv(info / f"pair_t0_s{s}_session_metrics.csv").set_index("step") for s in (0, 1)]
    psnr = pd.concat([s["val_psnr"].dropna() for s in sessions], axis=1, keys=[0, 1])
    assert len(psnr) == 4 and (psnr[0] != psnr[1]).any()  # two seeds, an evaluation every 3 of 12 steps
    np.testing.assert_allclose(values(pair["x"]), psnr.index)
    np.testing.assert_allclose(values(pair["y"]), psnr.mean(axis=1))
    np.testing.assert_allclose(values(band["y"])[:4], psnr.mean(axis=1) + psnr.std(axis=1, ddof=0))
    assert layout["xaxis"]["title"]["text"] == "step" and layout["yaxis"]["title"]["text"] == "val_psnr"


def test_legends_title_and_metric_options(root, tmp_path, monkeypatch):
    monkeypatch.chdir(root)
    result = invoke("plot", "-f", "solo,pair", "-l", "lr 3e-3, lr 1e-3", "-t", "Loss: LR", "-m", "loss")
    assert result.exit_code == 0, result.output
    html = root / "data" / "plots" / "loss_lr.html"
    assert (root / "data" / "plots" / "loss_lr.png").is_file()
    assert trace_names(html) == ["lr 3e-3", "lr 1e-3 ± std", "lr 1e-3"]
    layout = figure(html)[1]
    assert layout["title"]["text"] == "Loss: LR" and layout["yaxis"]["title"]["text"] == "loss"


def test_runs_resolve_from_paths_and_directory_names(root, tmp_path, monkeypatch):
    monkeypatch.chdir(root)
    pair, solo = run_path(root, "pair"), run_path(root, "solo")
    result = invoke("plot", "-f", f"{pair},{solo.name},{pair.name}", "-o", str(tmp_path))
    assert result.exit_code == 0, result.output
    names = trace_names(tmp_path / "val_psnr_pair_vs_solo_vs_pair.html")
    assert names == [f"{pair.name} ± std", pair.name, solo.name, f"{pair.name} ± std", pair.name]


def test_a_spec_name_plots_its_newest_run(root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    solo = run_path(root, "solo")
    for name in ("solo_2020_01_01_000000_2", "solo_2020_01_01_000000_10"):
        shutil.copytree(solo, tmp_path / "data" / name)
    newest = tmp_path / "data" / "solo_2020_01_01_000000_10"
    for path in (newest / "info").glob("*_session_metrics.csv"):
        path.unlink()
    result = invoke("plot", "-f", "solo", "-o", str(tmp_path))
    assert result.exit_code == 1
    assert result.output == (
        f"error: {Path('data') / newest.name}: no session metrics to plot "
        "(info/solo_t*_s*_session_metrics.csv); the run failed or was stopped before it logged a row\n"
    )
    listing = invoke("plot-list").output.splitlines()
    assert listing[1].split()[:6] == ["solo_2020_01_01_000000_10", "laq", "train", "no", "-", "0"]
    assert listing[1].endswith("(no session metrics)")
    assert listing[2].split()[:6] == ["solo_2020_01_01_000000_2", "laq", "train", "yes", "t0", "1"]


def test_a_multi_trial_run_plots_its_best_trial_with_session_metrics(root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    multi = shutil.copytree(run_path(root, "multi"), tmp_path / "data" / run_path(root, "multi").name)
    best, second = pd.read_csv(multi / "info" / "multi_experiment.csv")["trial"]
    assert (best, second) == (1, 0)  # the table's order, not the trials' numbers
    result = invoke("plot", "-f", "multi", "-o", str(tmp_path))
    assert result.exit_code == 0 and f"trial {best}, 1 session" in result.output, result.output
    for path in (multi / "info").glob(f"multi_t{best}_s*_session_metrics.csv"):
        path.unlink()  # as for a trial ASHA stopped early
    result = invoke("plot", "-f", "multi", "-o", str(tmp_path))
    assert result.exit_code == 0 and f"trial {second}, 1 session" in result.output, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-f", "pair,nope"], "error: -f nope: no run directory or spec of that name under data/; see "),
        (
            ["-f", "pair", "-m", "psnr"],
            "error: -m psnr: pair_.+ \\(trial 0\\) has no 'psnr'; it has: lr, loss, ",
        ),
        (["-f", "pair,solo", "-l", "a"], "error: -l/--legends: 1 legends for 2 runs; give one per run$"),
        (["-f", "specs.json"], "error: -f specs.json: no run directory or spec of that name under data/"),
        (["-f", "data"], "error: -f data: data is not a run directory"),
    ],
)
def test_bad_arguments_fail_with_one_line_and_exit_2(root, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(root)
    result = invoke("plot", *args, "-o", str(tmp_path / "plots"))
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert re.match(message, lines[0]), lines[0]
    assert not (tmp_path / "plots").exists()


def test_plot_list_names_each_run_and_what_it_can_plot(root, tmp_path, monkeypatch):
    monkeypatch.chdir(root)
    lines = invoke("plot-list").output.splitlines()
    assert lines[0].split() == ["run", "stage", "mode", "plottable", "trial", "sessions", "metrics"]
    rows = {line.split()[0].rsplit("_", 4)[0]: line.split() for line in lines[1:]}
    assert rows["pair"][1:6] == ["laq", "train", "yes", "t0", "2"]
    assert rows["solo"][1:6] == ["laq", "train", "yes", "t0", "1"]
    assert rows["multi"][1:4] == ["laq", "search", "yes"]
    assert "loss," in rows["pair"] and "val_psnr," in rows["pair"]
    monkeypatch.chdir(tmp_path)
    assert invoke("plot-list").output == "no run directories under data/\n"


def test_plot_imports_neither_torch_nor_ray(root, tmp_path):
    code = (
        "import sys; from typer.testing import CliRunner; from hlrp_lab.cli.main import app\n"
        f"for args in (['plot', '--help'], ['plot-list', '--help'], ['plot-list'], "
        f"['plot', '-f', 'pair,solo', '-o', {str(tmp_path)!r}]):\n"
        "    result = CliRunner().invoke(app, args); assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert (tmp_path / "val_psnr_pair_vs_solo.html").is_file()
