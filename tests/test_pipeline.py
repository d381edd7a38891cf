"""The three stages chained on the procedural data with tiny models, as a user runs them: LAQ -> `data label`
-> foundation -> finetune (from the foundation run, and from scratch) -> offline action error."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from hlrp_lab.cli.main import app
from hlrp_lab.data.dataset import data_urls
from hlrp_lab.data.pairs import to_float
from hlrp_lab.data.shards import read_episodes, read_manifest, shard_urls
from hlrp_lab.experiment.lab import run_lab
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.runs import resolve_reference
from hlrp_lab.spec.check import check_spec
from hlrp_lab.spec.spec_util import Mode
from hlrp_lab.stages.finetune import FinetuneStage
from hlrp_lab.stages.foundation import check_labels
from hlrp_lab.stages.laq import load_laq
from hlrp_lab.stages.rollouts import PushRollouts, check_simulated, simulated_origin
from tests.conftest import tiny_spec_dict

pytestmark = pytest.mark.slow
TINY_VLA = {
    "name": "SmolVLM",
    "config": {
        "vision_config": {"image_size": 32, "hidden_size": 32, "num_hidden_layers": 1},
        "text_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
    },
}
LATENT = {"name": "CodeQueries", "num_tokens": 2, "codebook_size": 4}  # the tiny LAQ's quantizer


def vla_spec(stage: dict, cache: Path, **change) -> dict:
    spec = tiny_spec_dict(cache)
    spec.update(stage)
    spec["data"].update(pairs="pair", val_split=0.25)
    spec["train"].update(max_step=30, eval_frequency=15, log_frequency=5)
    for key, value in change.items():
        spec[key].update(value)
    return spec


@pytest.fixture(scope="module")
def chain(tmp_path_factory, shard_cache) -> dict[str, Path]:
    """The runs and shards of the whole chain, in one working directory."""
    root = tmp_path_factory.mktemp("chain")
    cwd = Path.cwd()
    os.chdir(root)
    try:
        specs = root / "specs.json"
        laq = tiny_spec_dict(shard_cache)
        laq["train"].update(max_step=40, eval_frequency=20)
        specs.write_text(json.dumps({"laq": laq}))
        paths = {"root": root, "laq": run_lab(specs, "laq", Mode("train"), {})}
        laq_data = str(Path(data_urls(check_spec(laq)["data"])[0]).parent)
        result = CliRunner().invoke(app, ["data", "label", "latest:laq", laq_data, "data/shards/labelled"])
        assert result.exit_code == 0, result.output
        paths["labels"] = root / "data" / "shards" / "labelled"
        model = {"vla": TINY_VLA, "latent_head": LATENT}
        foundation = vla_spec({"stage": "foundation", "model": model}, shard_cache)
        del foundation["data"]["source"]
        foundation["data"]["shards"] = str(paths["labels"])
        finetune_model = {**model, "action_head": {"name": "MLPRegression", "hidden": 32}}
        finetune = vla_spec({"stage": "finetune", "model": finetune_model}, shard_cache)
        finetune["data"]["max_episodes"] = 3
        finetune["train"]["init_from"] = "${foundation}"
        scratch = json.loads(json.dumps(finetune))
        scratch["train"]["init_from"] = None
        specs.write_text(json.dumps({"laq": laq, "vla": foundation, "ft": finetune, "bc": scratch}))
        paths["vla"] = run_lab(specs, "vla", Mode("train"), {})
        paths["ft"] = run_lab(specs, "ft", Mode("train"), {"foundation": "latest:vla"})
        paths["bc"] = run_lab(specs, "bc", Mode("train"), {})
        paths["specs"] = specs
        yield {name: root / path if name != "root" else path for name, path in paths.items()}
    finally:
        os.chdir(cwd)


def metrics(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / "info" / f"{name}_t0_trial_metrics.json").read_text())["mean"]


def test_labels_are_the_laq_codes_of_each_pair(chain):
    manifest = read_manifest(chain["labels"])
    labels = manifest["labels"]
    assert labels["laq_spec"] == "laq" and Path(labels["laq_run"]).name == chain["laq"].name
    assert labels["offset"] == 1 and labels["num_tokens"] == 2 and labels["codebook_size"] == 4
    assert manifest["parent"]["source"] == "procedural" and "codes.npy" in manifest["keys"]
    episodes = list(read_episodes(shard_urls(chain["labels"])))
    assert len(episodes) == 12 and all(
        e.codes.shape == (7, 2) and e.codes.dtype == np.int64 for e in episodes
    )
    model = load_laq(resolve_reference(str(chain["laq"]), "laq"), torch.device("cpu"))
    first = episodes[0]
    pair = {"frame_t": first.frames[3:4].copy(), "frame_tk": first.frames[4:5].copy()}
    batch = to_float(pair, torch.device("cpu"))
    with torch.no_grad():
        assert model.codes(batch["frame_t"], batch["frame_tk"]).tolist() == [first.codes[3].tolist()]
    assert first.actions is not None and first.instruction.startswith("push the ")


def test_foundation_predicts_codes_and_reports_the_majority_baseline(chain):
    result = metrics(chain["vla"], "vla")
    for key in ("val_token_acc", "val_exact_match", "majority_token_acc", "majority_exact_match", "val_loss"):
        assert 0 <= result[key] <= (1 if key != "val_loss" else 10), key
    assert (chain["vla"] / "model" / "vla_t0_tokenizer" / "tokenizer.json").is_file()
    history = pd.read_csv(chain["vla"] / "info" / "vla_t0_s0_session_metrics.csv")
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]


def test_finetune_starts_from_the_foundation_weights(chain):
    spec = check_spec(json.loads((chain["ft"] / "info" / "ft_spec.json").read_text())["ft"])
    stage = FinetuneStage(spec, torch.device("cpu"), seed=0)
    foundation = load_file(str(resolve_reference(str(chain["vla"]), "init").weights))
    weights = stage.model.vla.state_dict()
    assert set(foundation) == set(weights)
    assert all(torch.equal(foundation[key], weights[key]) for key in foundation)
    assert (chain["ft"] / "model" / "ft_t0_tokenizer" / "tokenizer.json").is_file()
    assert stage.model.action_low.shape == (2,) and (stage.model.action_high > stage.model.action_low).all()


def test_finetune_and_scratch_report_the_offline_action_error(chain):
    for name in ("ft", "bc"):
        result = metrics(chain[name], name)
        assert np.isfinite(result["val_action_mse"]) and 0 < result["mean_action_mse"] < 2
        history = pd.read_csv(chain[name] / "info" / f"{name}_t0_s0_session_metrics.csv")
        assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    saved = json.loads((chain["ft"] / "info" / "ft_spec.json").read_text())["ft"]
    assert (
        saved["train"]["init_from"] == f"data/{chain['vla'].name}"
    )  # latest:vla, pinned when the run started


def test_a_foundation_spec_that_does_not_fit_its_labels_fails_before_training(chain, shard_cache):
    model = {"vla": TINY_VLA, "latent_head": {**LATENT, "num_tokens": 3}}
    spec = vla_spec({"stage": "foundation", "model": model}, shard_cache)
    del spec["data"]["source"]
    spec["data"]["shards"] = str(chain["labels"])
    with pytest.raises(SpecError, match="model.latent_head.num_tokens: 3, but the LAQ run laq has 2"):
        check_labels(check_spec(spec), shard_urls(chain["labels"]))
    spec["model"]["latent_head"]["num_tokens"] = 2
    spec["data"]["offsets"] = [2]
    with pytest.raises(
        SpecError, match=r"data.offsets: the codes label pairs \(t, t\+1\); pass -s data.offsets=\[1\]"
    ):
        check_labels(check_spec(spec), shard_urls(chain["labels"]))
    unlabelled = data_urls(check_spec(tiny_spec_dict(shard_cache))["data"])
    with pytest.raises(
        SpecError, match="these shards have no latent actions; label them with `hlrp-lab data label"
    ):
        check_labels(check_spec(spec), unlabelled)


def test_a_finetuned_policy_runs_closed_loop_in_metaworld(tmp_path, shard_cache, monkeypatch):
    """Tiny Meta-World demonstrations -> a policy finetuned from scratch -> `eval`: seeded episodes in the
    simulator, success per task, an mp4 of a rollout."""
    monkeypatch.chdir(tmp_path)
    args = [
        "data",
        "metaworld",
        "data/shards/mw",
        "--tasks",
        "reach-v3",
        "--episodes",
        "3",
        "--max-steps",
        "12",
    ]
    result = CliRunner().invoke(app, [*args, "--size", "32", "--workers", "1"])
    assert result.exit_code == 0, result.output
    model = {"vla": TINY_VLA, "latent_head": LATENT, "action_head": {"name": "FlowMatching", "hidden": 32}}
    spec = vla_spec({"stage": "finetune", "model": model}, shard_cache)
    del spec["data"]["source"]
    spec["data"].update(shards="data/shards/mw", val_split=0.0, action_chunk=2)
    spec["train"].update(max_step=6, eval_frequency=6)
    spec["rollout"] = {"episodes": 2, "max_steps": 8, "workers": 2, "videos": 1}
    (tmp_path / "specs.json").write_text(json.dumps({"ft": spec}))
    run_dir = run_lab(tmp_path / "specs.json", "ft", Mode("train"), {})
    run_lab(tmp_path / "specs.json", "ft", Mode("eval", run_dir), {})
    evaluated = json.loads((run_dir / "info" / "ft_t0_eval_metrics.json").read_text())["mean"]
    assert evaluated["episodes"] == 2 and 0 <= evaluated["success/reach-v3"] <= 1
    assert 1 <= evaluated["episode_length"] <= 8 and np.isfinite(evaluated["val_action_mse"])
    assert (run_dir / "graph" / "ft_t0_s0_rollout_reach-v3_0.mp4").stat().st_size > 0


def test_a_policy_finetuned_on_procedural_data_runs_closed_loop_in_the_push_world(
    tmp_path, shard_cache, monkeypatch
):
    """Procedural data -> a tiny policy -> rollouts in the push world at each evaluation and in `eval` mode:
    success per task, the success chart, an mp4; Meta-World's task list is refused."""
    model = {"vla": TINY_VLA, "latent_head": LATENT, "action_head": {"name": "MLPRegression", "hidden": 32}}
    spec = vla_spec({"stage": "finetune", "model": model}, shard_cache)
    spec["train"].update(max_step=4, eval_frequency=4, eval_rollouts=5, pictures=True)
    spec["rollout"] = {"episodes": 3, "max_steps": 6, "videos": 1}
    (tmp_path / "specs.json").write_text(json.dumps({"ft": spec}))
    monkeypatch.chdir(tmp_path)
    run_dir = run_lab(tmp_path / "specs.json", "ft", Mode("train"), {})
    run_lab(tmp_path / "specs.json", "ft", Mode("eval", run_dir), {})
    trained = metrics(run_dir, "ft")
    assert trained["episodes"] == 5 and 0 <= trained["pc_success"] <= 100
    assert any(key.startswith("success/push-") for key in trained)
    evaluated = json.loads((run_dir / "info" / "ft_t0_eval_metrics.json").read_text())["mean"]
    assert evaluated["episodes"] == 3 and 1 <= evaluated["episode_length"] <= 6
    assert (run_dir / "graph" / "ft_t0_s0_picture_best_success.png").stat().st_size > 0
    assert len(list((run_dir / "graph").glob("ft_t0_s0_rollout_push-*_0.mp4"))) == 1
    saved = json.loads((run_dir / "info" / "ft_t0_spec.json").read_text())["ft"]
    old_world = {"source": "procedural", "source_args": {"num_objects": 2}, "image_size": 32, "generator": 1}
    with pytest.raises(SpecError, match=r"older push world \(generator 1, now 2\)"):
        PushRollouts(check_spec(saved), old_world)
    saved["rollout"]["tasks"] = ["reach-v3"]
    with pytest.raises(SpecError, match="rollout.tasks: names Meta-World tasks"):
        FinetuneStage(check_spec(saved), torch.device("cpu"), seed=0)


def test_a_frozen_backbone_starts_from_the_foundation_and_only_the_head_trains(chain):
    spec = json.loads((chain["ft"] / "info" / "ft_spec.json").read_text())["ft"]
    spec["model"]["vla"]["freeze"] = True  # a training option: the foundation's block still matches
    stage = FinetuneStage(check_spec(spec), torch.device("cpu"), seed=0)
    assert not any(p.requires_grad for p in stage.model.vla.backbone.parameters())
    assert all(p.requires_grad for p in stage.model.action_head.parameters())
    spec["model"]["vla"]["config"] = {"text_config": {"num_hidden_layers": 2}}
    with pytest.raises(SpecError, match="model.vla: differs from the foundation run vla_"):
        FinetuneStage(check_spec(spec), torch.device("cpu"), seed=0)


def test_closed_loop_needs_data_from_a_simulated_world(chain, tmp_path):
    origin = simulated_origin(shard_urls(chain["labels"]))  # through the labelling
    assert origin["source"] == "procedural" and origin["generator"] == 2
    unknown = [str(tmp_path / "no-manifest-000000.tar")]
    assert simulated_origin(unknown) is None
    with pytest.raises(SpecError, match="train.eval_rollouts: closed-loop evaluation runs in Meta-World or"):
        check_simulated(unknown)


def test_a_spec_with_a_search_block_still_trains_in_train_mode(chain):
    """A search prepares only the data (each trial makes its tokenizer); other modes prepare everything."""
    spec = json.loads(chain["specs"].read_text())["vla"]
    spec["search"] = {"optim.lr__loguniform": [1e-4, 1e-2]}
    spec["train"].update(max_step=2, eval_frequency=2)
    path = chain["root"] / "search_block.json"
    path.write_text(json.dumps({"vla_with_search": spec}))
    run_dir = run_lab(path, "vla_with_search", Mode("train"), {})
    assert (run_dir / "model" / "vla_with_search_t0_tokenizer" / "tokenizer.json").is_file()
    assert metrics(run_dir, "vla_with_search")["step"] == 2
