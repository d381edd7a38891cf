"""The foundation stage on tiny labelled shards (codes: the push direction, then a constant) and a tiny SmolVLM:
batches, the step, learning a fixed batch, token accuracy against the majority baseline, label checks and the
meta-device build."""

import math
import re
from collections import Counter

import pytest
import torch
from torch.nn import functional as F

from hlrp_lab.experiment.build import dry_build
from hlrp_lab.experiment.loop import evaluate_stage
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.spec.check import check_spec
from hlrp_lab.stages.foundation import FoundationStage
from tests.stages.conftest import (
    BATCH,
    CODEBOOK,
    CONSTANT_CODE,
    SIZE,
    TOKENS,
    direction_code,
    fit_fixed_batch,
    grad_norm,
    same_batch,
    vla_spec,
)

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
FOUNDATION_METRICS = {
    "val_loss",
    "val_token_acc",
    "val_top3_acc",
    "val_exact_match",
    "majority_token_acc",
    "majority_exact_match",
    "data/skipped_shards",
}


@pytest.fixture(scope="module")
def spec(labelled_shards, tmp_path_factory) -> dict:
    """The checked spec, its data checked and its tokenizer made (once: the stage only reads them)."""
    checked = vla_spec("foundation", labelled_shards, tmp_path_factory.mktemp("run"))
    FoundationStage.prepare_data(checked)
    FoundationStage.prepare(checked)
    return checked


def build(spec: dict, seed: int = 0) -> FoundationStage:
    torch.manual_seed(seed)
    return FoundationStage(spec, CPU, seed=seed)


@pytest.fixture
def stage(spec) -> FoundationStage:
    return build(spec)


def test_train_batch_is_a_function_of_its_index(stage, spec):
    batch = stage.train_batch(2)
    assert set(batch) == {"frame_t", "codes", "instruction"}
    frames, codes = batch["frame_t"], batch["codes"]
    assert frames.shape == (BATCH, 3, SIZE, SIZE) and frames.dtype == torch.float32
    assert frames.device == stage.device and 0 <= frames.min() and frames.max() <= 1
    assert codes.shape == (BATCH, TOKENS) and codes.dtype == torch.int64 and codes.device == stage.device
    assert codes[:, 0].tolist() == [
        direction_code(i) for i in batch["instruction"]
    ]  # the labels of the pairs
    assert (codes[:, 1] == CONSTANT_CODE).all()
    assert same_batch(stage.train_batch(2), batch)
    assert same_batch(build(spec).train_batch(2), batch)
    assert not torch.equal(stage.train_batch(3)["frame_t"], frames)


def test_train_step_loss_is_finite_and_reaches_the_backbone_and_head(stage):
    stage.model.train()
    loss, logs = stage.train_step(stage.train_batch(0))
    assert loss.shape == () and math.isfinite(loss.item()) and loss.item() > 0
    assert set(logs) == {"token_acc"} and 0 <= logs["token_acc"].item() <= 1
    assert not logs["token_acc"].requires_grad
    loss.backward()
    assert grad_norm(stage.model.backbone) > 0 and grad_norm(stage.model.latent_head) > 0


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(stage):
    batch = stage.train_batch(0)
    losses = fit_fixed_batch(stage, batch, steps=15, lr=1e-3)
    assert all(map(math.isfinite, losses))
    assert losses[-1] < 0.5 * losses[0]  # about 0.2 x
    _, logs = stage.train_step(batch)
    assert logs["token_acc"].item() >= 0.75


def test_evaluate_reports_token_accuracy_and_the_majority_baseline(stage):
    metrics = evaluate_stage(stage, "fp32")
    assert set(metrics) == FOUNDATION_METRICS and FoundationStage.Config.metric in metrics
    assert 0 <= metrics["val_exact_match"] <= metrics["val_token_acc"] <= 1
    assert math.isfinite(metrics["val_loss"]) and metrics["val_loss"] > 0
    assert 0.5 <= metrics["majority_token_acc"] <= 1  # the second token is always the same code
    assert 0 <= metrics["majority_exact_match"] <= 1 and metrics["data/skipped_shards"] == 0


def one_hot_logits(codes: torch.Tensor) -> torch.Tensor:
    """Logits (N, K, C) that predict ``codes`` (N, K) with confidence."""
    return 20 * F.one_hot(codes, CODEBOOK).float()


def test_the_metrics_score_what_the_model_predicts(stage, monkeypatch):
    """A model that predicts the training pairs' most frequent codes scores the majority baseline; one that
    predicts the held-out codes scores 1."""
    val = torch.from_numpy(stage.data.val["codes"])
    probe = stage.data.probe["codes"]
    majority = torch.tensor([Counter(column.tolist()).most_common(1)[0][0] for column in probe.T])
    monkeypatch.setattr(stage, "logits", lambda pairs: one_hot_logits(majority.expand(len(val), -1)))
    metrics = evaluate_stage(stage, "fp32")
    assert metrics["val_token_acc"] == pytest.approx(metrics["majority_token_acc"])
    assert majority[1] == CONSTANT_CODE
    monkeypatch.setattr(stage, "logits", lambda pairs: one_hot_logits(val))
    perfect = evaluate_stage(stage, "fp32")
    assert perfect["val_token_acc"] == perfect["val_exact_match"] == 1 and perfect["val_loss"] < 1e-6
    assert perfect["majority_token_acc"] == metrics["majority_token_acc"]


def test_prepare_data_refuses_unlabelled_shards(action_shards, tmp_path):
    spec = vla_spec("foundation", action_shards, tmp_path)
    message = (
        "data: these shards have no latent actions; label them with `hlrp-lab data label LAQ_RUN SHARDS "
        'OUT_DIR`, or name a {"name": "label", "laq": ...} data.source'
    )
    with pytest.raises(SpecError, match=f"^{re.escape(message)}$"):
        FoundationStage.prepare_data(spec)
    with pytest.raises(SpecError, match=f"^{re.escape(message)}$"):  # the stage itself checks too
        FoundationStage(spec, CPU, seed=0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"model": {"latent_head": {"num_tokens": 3}}},
            "model.latent_head.num_tokens: 3, but the LAQ run laq has 2; pass -s model.latent_head.num_tokens=2",
        ),
        (
            {"model": {"latent_head": {"codebook_size": 8}}},
            (
                "model.latent_head.codebook_size: 8, but the LAQ run laq has 4; "
                "pass -s model.latent_head.codebook_size=4"
            ),
        ),
        (
            {"data": {"offsets": [2]}},
            "data.offsets: the codes label pairs (t, t+1); pass -s data.offsets=[1]",
        ),
    ],
)
def test_prepare_data_refuses_a_spec_that_does_not_fit_the_labels(spec, change, message):
    changed = {**spec, "data": {**spec["data"]}, "model": {**spec["model"]}}
    changed["data"].update(change.get("data", {}))
    if "model" in change:
        changed["model"]["latent_head"] = {**spec["model"]["latent_head"], **change["model"]["latent_head"]}
    with pytest.raises(SpecError, match=f"^{re.escape(message)}$"):
        FoundationStage.prepare_data(check_spec(changed))


def test_check_model_builds_on_the_meta_device(spec):
    assert dry_build(spec) is spec
    with torch.device("meta"):
        model = FoundationStage.build_model(spec)
    assert all(p.is_meta for p in model.parameters())
    assert model.num_queries == TOKENS and model.backbone.hidden_size == 32  # TINY_VLA's text width
    assert model.latent_head.proj.in_features == 32 and model.latent_head.proj.out_features == CODEBOOK


def test_check_model_does_not_download_a_pretrained_backbone(spec, tmp_path):
    """A pretrained model's shapes need its download: the spec check leaves it to the run."""
    vla = {**spec["model"]["vla"], "pretrained": str(tmp_path / "absent")}
    pretrained = check_spec({**spec, "model": {**spec["model"], "vla": vla}})
    FoundationStage.check_model(pretrained)  # builds nothing
    with pytest.raises(SpecError, match=r"model\.vla\.pretrained: .*absent is not a directory"):
        FoundationStage.build_model(pretrained)
