"""RunLayout: the paths of a run directory, what exists in one, and that no other module spells them."""

import re
from pathlib import Path

import pytest

from hlrp_lab.lib.layout import (
    RunLayout,
    checkpoint_name,
    checkpoint_state_name,
    file_stem,
    spec_and_trial_of,
)

PACKAGE = Path(__file__).parents[2] / "hlrp_lab"
# How a run's file names are spelled: the stem in an f-string ({spec}_t{trial}_s{session}) and the tables' tails.
SPELLINGS = re.compile(r"_t\{|_s\{|_trial_metrics|_session_metrics")


def test_no_module_but_layout_spells_a_run_file_name():
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != PACKAGE / "lib" / "layout.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if SPELLINGS.search(line)
    ]
    assert not found, "run file names spelled outside hlrp_lab/lib/layout.py (use RunLayout):\n" + "\n".join(
        found
    )


@pytest.fixture
def layout(tmp_path) -> RunLayout:
    return RunLayout(tmp_path / "run_2026_01_01_000000", "run")


def test_folders_and_run_files(layout):
    root = layout.run_dir
    assert (layout.info, layout.model, layout.graph, layout.log, layout.ray) == (
        root / "info",
        root / "model",
        root / "graph",
        root / "log",
        root / "ray",
    )
    assert layout.folders == (root / "info", root / "graph", root / "log", root / "model")
    assert layout.spec_file == root / "info" / "run_spec.json"
    assert layout.status == root / "info" / "status.json"
    assert layout.experiment_table == root / "info" / "run_experiment.csv"
    assert layout.best_spec == root / "info" / "run_best_spec.json"
    assert layout.log_file() == root / "log" / "run.log"
    assert layout.log_file(2) == root / "log" / "run_t2.log"
    assert layout.log_file(2, 1) == root / "log" / "run_t2_s1.log"
    assert layout.experiment_graph("optim.lr") == root / "graph" / "run_experiment_graph_optim_lr"


def test_trial_and_session_files(layout):
    root = layout.run_dir
    assert layout.stem() == "run" and layout.stem(3) == "run_t3" and layout.stem(3, 10) == "run_t3_s10"
    assert layout.trial_spec(3) == root / "info" / "run_t3_spec.json"
    assert layout.trial_metrics(3) == root / "info" / "run_t3_trial_metrics.json"
    assert layout.eval_metrics(3) == root / "info" / "run_t3_eval_metrics.json"
    assert layout.trial_graph(3, "loss") == root / "graph" / "run_t3_trial_graph_loss"
    assert layout.tokenizer(3) == root / "model" / "run_t3_tokenizer"
    assert layout.session_metrics(3, 1) == root / "info" / "run_t3_s1_session_metrics.csv"
    assert layout.session_graph(3, 1, "loss") == root / "graph" / "run_t3_s1_session_graph_loss"
    assert layout.checkpoint(3, 1, "best") == root / "model" / "run_t3_s1_best.safetensors"
    assert layout.checkpoint_state(3, 1, "last") == root / "model" / "run_t3_s1_last_state.pt"
    assert layout.video_prefix(3, 1) == root / "graph" / "run_t3_s1_rollout"


def test_patterns_and_name_forms(layout):
    assert layout.session_metrics("*", "*").name == "run_t*_s*_session_metrics.csv"
    assert (
        layout.checkpoint("<trial>", "<session>", "<tag>").name == "run_t<trial>_s<session>_<tag>.safetensors"
    )
    assert file_stem("x", 1, 2) == "x_t1_s2" and file_stem("x") == "x"
    assert checkpoint_name("x_t1_s2", "best") == "x_t1_s2_best.safetensors"
    assert checkpoint_state_name("x_t1_s2", "best") == "x_t1_s2_best_state.pt"
    assert RunLayout.trial_metrics_glob(".parquet") == "info/*_trial_metrics.parquet"
    assert RunLayout.session_metrics_glob() == "info/*_session_metrics.csv"
    assert RunLayout.experiment_table_glob(".parquet") == "info/*_experiment.parquet"
    assert RunLayout.model_globs() == ("model/*.safetensors", "model/*_tokenizer/*")
    assert RunLayout.is_spec_file("run_t0_spec.json") and not RunLayout.is_spec_file(
        "run_t0_trial_metrics.json"
    )


def test_of_reads_the_specs_meta(tmp_path):
    spec = {"meta": {"run_dir": str(tmp_path / "a_ts"), "spec_name": "a"}}
    assert RunLayout.of(spec) == RunLayout(tmp_path / "a_ts", "a")


def touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")


def test_what_exists_is_listed_in_numeric_order(layout):
    touch(
        *(layout.trial_metrics(t) for t in (10, 2, 0)),
        *(layout.session_metrics(t, s) for t in (10, 3) for s in (10, 2, 0)),
        layout.info / "run_t7_eval_metrics.json",  # not metrics of a trial's training
        layout.info / "other_t5_trial_metrics.json",  # another spec's
        layout.info / "run_extra_t6_trial_metrics.json",  # spec run_extra, not run
        layout.info / "run_t4_s1_session_metrics.csv.tmp",
        RunLayout(layout.run_dir, "run_t3").session_metrics(9, 0),  # spec run_t3, trial 9: not trial 3 of run
    )
    assert layout.trials() == [0, 2, 10]
    assert layout.trials_with_sessions() == [3, 10]
    assert [p.name for p in layout.session_metrics_files(3)] == [
        "run_t3_s0_session_metrics.csv",
        "run_t3_s2_session_metrics.csv",
        "run_t3_s10_session_metrics.csv",
    ]
    assert layout.session_metrics_files(1) == []


def test_nothing_exists_in_a_missing_run(layout):
    assert (
        layout.trials() == []
        and layout.trials_with_sessions() == []
        and layout.session_metrics_files(0) == []
    )


def test_trial_models_are_a_trials_checkpoints_and_tokenizer(layout):
    touch(
        layout.checkpoint(1, 0, "best"),
        layout.checkpoint_state(1, 0, "best"),
        layout.tokenizer(1) / "tokenizer.json",
        layout.checkpoint(11, 0, "best"),
    )
    assert [p.name for p in layout.trial_models(1)] == [
        "run_t1_s0_best.safetensors",
        "run_t1_s0_best_state.pt",
        "run_t1_tokenizer",
    ]


def test_trial_of_reads_a_trial_stem(layout):
    assert layout.trial_of("run_t0") == 0 and layout.trial_of(layout.stem(12)) == 12
    assert RunLayout(layout.run_dir, "a_t1").trial_of("a_t1_t3") == 3  # a spec name may hold "_t"
    for name in ("run_t", "run_t1_s0", "other_t1", "run_tx"):
        with pytest.raises(ValueError, match="is not a trial stem run_t<trial>"):
            layout.trial_of(name)


def test_parse_checkpoint(layout):
    assert layout.parse_checkpoint(layout.checkpoint(2, 10, "best").name) == (2, 10, "best")
    assert layout.parse_checkpoint("run_t0_s1_last.safetensors") == (0, 1, "last")
    assert layout.parse_checkpoint("run_t0_s1_last_state.pt") is None
    assert layout.parse_checkpoint("other_t0_s1_last.safetensors") is None
    assert layout.parse_checkpoint("run_t0_best.safetensors") is None


def test_spec_and_trial_of():
    assert spec_and_trial_of("a_t1_t12_trial_metrics.json") == ("a_t1", 12)
    assert spec_and_trial_of("a_t1_eval_metrics.json") is None


def test_run_dir_of_a_run_directory_or_its_weights(layout):
    assert RunLayout.run_dir_of(layout.checkpoint(0, 1, "best")) == layout.run_dir
    assert RunLayout.run_dir_of(layout.run_dir) == layout.run_dir
