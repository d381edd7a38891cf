"""The README's "three stages" commands, in `train` mode on the built-in procedural data, each show its stage
working: the LAQ's latent actions predict the true action (probe R²), the foundation VLA predicts their tokens
better than the most frequent code, and the finetuned policy's action error is below always predicting the
mean."""

import json
from pathlib import Path

import pytest

from tests.test_e2e import ROOT, run_lab

pytestmark = pytest.mark.slow


def trial_metrics(cwd: Path, name: str) -> dict:
    (path,) = (cwd / "data").glob(f"{name}_*/info/{name}_t0_trial_metrics.json")
    return json.loads(path.read_text())["mean"]


@pytest.mark.timeout(1500)
def test_the_three_stages_on_the_built_in_data_each_beat_their_baseline(tmp_path):
    specs = ROOT / "specs"
    # one session of laq_debug (its spec trains two seeds): the margins are per session
    run_lab("run", str(specs / "laq.json"), "laq_debug", "train", "-s", "meta.max_session=1", cwd=tmp_path)
    laq = trial_metrics(tmp_path, "laq_debug")
    assert laq["probe_r2"] >= 0.5, laq  # README's run: 0.570
    assert laq["psnr_gain"] > 2.0 and laq["codes_used"] > 0.5, laq

    run_lab("run", str(specs / "foundation.json"), "vla_debug", "train", cwd=tmp_path)
    vla = trial_metrics(tmp_path, "vla_debug")
    # README's run: tokens 0.275 vs 0.191, whole latent actions (both tokens) 0.094 vs 0.058 on 1,024 pairs
    assert vla["val_token_acc"] >= vla["majority_token_acc"] + 0.04, vla
    assert vla["val_exact_match"] >= vla["majority_exact_match"] + 0.02, vla

    run_lab("run", str(specs / "finetune.json"), "ft_debug", "train", cwd=tmp_path)
    ft = trial_metrics(tmp_path, "ft_debug")
    assert ft["best"] <= 0.85 * ft["mean_action_mse"], ft  # README's run: 0.361 vs 0.473
