"""The foundation stage with each latent head on the same tiny labelled shards (codes: the push direction, then a
constant): both learn above the majority baseline; an ActTokens run's tokenizer holds exactly the code tokens
and its weights reload; finetuning reads the K states of an ActTokens foundation."""

import math

import pytest
import torch
from torch.nn import functional as F

from hlrp_lab.data.pairs import to_float
from hlrp_lab.experiment.checkpoint import save_weights
from hlrp_lab.experiment.loop import evaluate_stage
from hlrp_lab.lib.weights import load_weights
from hlrp_lab.stages.finetune import FinetuneStage
from hlrp_lab.stages.foundation import FoundationStage
from hlrp_lab.stages.vla import run_tokenizer
from tests.stages.conftest import CODEBOOK, LATENT, TINY_VLA, TOKENS, grad_norm, vla_spec

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
HEADS = ["CodeQueries", "ActTokens"]
STEPS, LR = 30, 3e-3


def head_spec(stage: str, shards, run_dir, head: str, **change) -> dict:
    model = {"vla": TINY_VLA, "latent_head": {**LATENT, "name": head}}
    if stage == "finetune":
        model["action_head"] = {"name": "MLPRegression", "hidden": 32}
    spec = vla_spec(stage, shards, run_dir, model=model, **change)
    cls = FoundationStage if stage == "foundation" else FinetuneStage
    cls.prepare_data(spec)
    cls.prepare(spec)
    return spec


@pytest.fixture(scope="module")
def specs(labelled_shards, tmp_path_factory) -> dict[str, dict]:
    return {
        head: head_spec("foundation", labelled_shards, tmp_path_factory.mktemp(head), head) for head in HEADS
    }


def train(stage, steps: int = STEPS) -> list[float]:
    """Losses of ``steps`` Adam steps on the stage's own training batches."""
    stage.model.train()
    optimizer = torch.optim.Adam([p for p in stage.model.parameters() if p.requires_grad], lr=LR)
    losses = []
    for index in range(steps):
        loss, _ = stage.train_step(stage.train_batch(index))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def build(spec: dict, seed: int = 0) -> FoundationStage:
    """The stage on the same data whatever ``seed``, which draws the initial weights."""
    torch.manual_seed(seed)
    return FoundationStage(spec, CPU, seed=0)


@pytest.mark.parametrize("head", HEADS)
def test_each_head_learns_the_codes_above_the_majority_baseline(specs, head):
    stage = build(specs[head])
    losses = train(stage)
    assert all(map(math.isfinite, losses)) and sum(losses[-5:]) / 5 < 0.5 * losses[0]
    metrics = evaluate_stage(stage, "fp32")  # ActTokens: greedy decoding, no true code given
    assert metrics["val_token_acc"] > metrics["majority_token_acc"] > 1 / CODEBOOK
    assert metrics["val_exact_match"] > metrics["majority_exact_match"]
    assert stage.val_predicted.shape == (len(stage.data.val["codes"]), TOKENS)
    assert stage.val_predicted.min() >= 0 and stage.val_predicted.max() < CODEBOOK


def test_act_tokens_val_loss_is_the_true_codes_likelihood_and_accuracy_what_it_decodes(specs):
    """Held-out accuracy scores greedy decoding; val_loss the teacher-forced negative log-likelihood (the
    cross-entropy of the greedy logits, conditioned on the model's own guesses, is another number)."""
    stage = build(specs["ActTokens"])  # untrained: its guesses of the first code are often wrong
    metrics = evaluate_stage(stage, "fp32")
    val, codes = stage.data.val, torch.from_numpy(stage.data.val["codes"])
    with torch.no_grad():
        frames = to_float({"frame_t": val["frame_t"]}, CPU)["frame_t"]
        forced = stage.model(frames, val["instruction"], codes)
        greedy = stage.model(frames, val["instruction"])
    assert metrics["val_loss"] == pytest.approx(F.cross_entropy(forced.flatten(0, 1), codes.flatten()).item())
    assert metrics["val_loss"] != pytest.approx(F.cross_entropy(greedy.flatten(0, 1), codes.flatten()).item())
    assert metrics["val_token_acc"] == pytest.approx((greedy.argmax(-1) == codes).float().mean().item())


def test_an_act_tokens_run_has_the_code_tokens_and_its_weights_reload(specs, tmp_path):
    spec = specs["ActTokens"]
    tokenizer = run_tokenizer(spec)  # the run's tokenizer folder, as sessions and later stages load it
    assert tokenizer.extra_special_tokens == [f"<ACT_{i}>" for i in range(CODEBOOK)]
    trained = build(spec)
    train(trained, steps=5)
    before = evaluate_stage(trained, "fp32")
    weights = tmp_path / "best.safetensors"
    save_weights(trained.model, weights, {})
    reloaded = build(spec, seed=1)
    assert evaluate_stage(reloaded, "fp32")["val_loss"] != before["val_loss"]
    load_weights(reloaded.model, weights, CPU)
    assert evaluate_stage(reloaded, "fp32") == before


def test_finetuning_reads_the_k_states_of_an_act_tokens_foundation(specs, action_shards, tmp_path):
    """What ``train.init_from`` does: the foundation's weights load into the policy's VLA; the action head reads
    K states; its loss trains the backbone and never the frozen latent head."""
    foundation = build(specs["ActTokens"])
    weights = tmp_path / "foundation.safetensors"
    save_weights(foundation.model, weights, {})
    spec = head_spec("finetune", action_shards, tmp_path / "ft", "ActTokens")
    torch.manual_seed(0)
    stage = FinetuneStage(spec, CPU, seed=0)
    load_weights(stage.model.vla, weights, CPU)
    batch = stage.train_batch(0)
    features = stage.model.features(batch["frame_t"], batch["instruction"])
    assert features.shape == (len(batch["frame_t"]), TOKENS * stage.model.vla.backbone.hidden_size)
    loss, _ = stage.train_step(batch)
    loss.backward()
    assert grad_norm(stage.model.vla.backbone) > 0 and grad_norm(stage.model.action_head) > 0
    assert grad_norm(stage.model.vla.latent_head) == 0
