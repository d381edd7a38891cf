"""Run references (`latest:<spec>`, a run directory, a weights file) on run directories made here."""

import json
from pathlib import Path

import pytest

from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.runs import newest_run, resolve_reference, run_dir_spec_name

RUN = "vla_search_2026_11_23_120000"


def make_run(root: Path, name: str, trials: dict[int, str], best: int | None = None) -> Path:
    """A run directory of spec vla_search whose trial t was trained with VLA ``trials[t]``."""
    run_dir = root / name
    (run_dir / "info").mkdir(parents=True)
    (run_dir / "model").mkdir()
    spec_name = run_dir_spec_name(name)

    def write(path: Path, vla: str) -> None:
        path.write_text(json.dumps({spec_name: {"model": {"vla": vla}}}))

    write(run_dir / "info" / f"{spec_name}_spec.json", "base")
    (run_dir / "info" / "status.json").write_text('{"status": "completed"}')
    for trial, vla in trials.items():
        write(run_dir / "info" / f"{spec_name}_t{trial}_spec.json", vla)
        (run_dir / "model" / f"{spec_name}_t{trial}_s0_best.safetensors").write_bytes(b"w")
    if best is not None:
        (run_dir / "info" / f"{spec_name}_experiment.csv").write_text(
            f"trial,status\n{best},completed\n0,stopped\n"
        )
    return run_dir


def test_a_search_run_means_its_best_trial_and_that_trials_spec(tmp_path):
    make_run(tmp_path, RUN, {0: "SmolVLM", 1: "Qwen2VL"}, best=1)
    reference = resolve_reference("latest:vla_search", "train.init_from", root=tmp_path)
    assert reference.trial == 1 and reference.weights.name == "vla_search_t1_s0_best.safetensors"
    assert reference.spec()["model"]["vla"] == "Qwen2VL" and reference.stem == "vla_search_t1"


def test_a_weights_file_names_its_trial_even_with_s_in_the_spec_name(tmp_path):
    run_dir = make_run(tmp_path, RUN, {0: "SmolVLM", 1: "Qwen2VL"})
    reference = resolve_reference(str(run_dir / "model" / "vla_search_t0_s0_best.safetensors"), "key")
    assert (reference.spec_name, reference.trial) == ("vla_search", 0)
    assert reference.spec()["model"]["vla"] == "SmolVLM"
    assert resolve_reference(str(run_dir), "key").trial == 0  # a train run: trial 0
    odd = run_dir / "model" / "weights.safetensors"
    odd.write_bytes(b"w")
    with pytest.raises(
        SpecError, match="key: weights.safetensors is not named vla_search_t<trial>_s<session>"
    ):
        resolve_reference(str(odd), "key")


def test_latest_is_the_newest_run_and_errors_name_the_key(tmp_path):
    make_run(tmp_path, "vla_search_2026_11_23_120000", {0: "a"})
    newer = make_run(tmp_path, "vla_search_2026_11_23_120000_1", {0: "b"})
    assert newest_run("vla_search", tmp_path) == newer
    (newer / "info" / "status.json").unlink()  # a run from before status files: completed if it has results
    assert newest_run("vla_search", tmp_path) != newer
    (newer / "info" / "vla_search_t0_trial_metrics.json").write_text("{}")
    assert newest_run("vla_search", tmp_path) == newer
    with pytest.raises(SpecError, match="train.init_from: no completed non-dev run of 'nothing' under"):
        resolve_reference("latest:nothing", "train.init_from", root=tmp_path)
    with pytest.raises(
        SpecError, match="data.source.laq: 'elsewhere' is not a run directory, a .safetensors"
    ):
        resolve_reference("elsewhere", "data.source.laq", root=tmp_path)
