"""Pictures of each stage at an evaluation (docs/PICTURES.md), drawn from real tiny models on the tiny data: the
PNGs each stage writes, read back as images, and the numbers behind them (the atlas's decoded codes, the
confusion matrices, top-k accuracy, the action traces of whole held-out episodes)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hlrp_lab.data.pairs import is_val_scene, to_float
from hlrp_lab.data.shards import read_episodes, shard_urls
from hlrp_lab.experiment.loop import evaluate_stage
from hlrp_lab.spec.check import check_spec
from hlrp_lab.stages import pictures
from hlrp_lab.stages.finetune import FinetuneStage
from hlrp_lab.stages.foundation import FoundationStage
from hlrp_lab.stages.laq import LAQStage, images
from hlrp_lab.stages.metrics import confusion_matrices, true_code_ranks
from tests.conftest import tiny_spec_dict
from tests.stages.conftest import CODEBOOK, TOKENS, fit_fixed_batch, vla_spec

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
PREFIX = "run_picture_last_"


def drawn(stage, folder: Path) -> list[Path]:
    """``stage.draw`` as the loop calls it: after an evaluation, the model in eval mode, without gradients."""
    evaluate_stage(stage, "fp32")
    with torch.no_grad():
        return stage.draw(folder, PREFIX)


def check_png(path: Path) -> np.ndarray:
    """The RGB pixels of a small, non-blank PNG."""
    image = np.asarray(Image.open(path).convert("RGB"))
    height, width = image.shape[:2]
    assert 200 <= width <= 2000 and 150 <= height <= 2000, (path.name, width, height)
    assert path.stat().st_size < 400_000, path.name
    assert image.std() > 20 and (image.min(-1) < 200).mean() > 0.02, path.name  # more than a blank page
    return image


def names(paths: list[Path], folder: Path) -> list[str]:
    assert all(path.parent == folder and path.name.startswith(PREFIX) for path in paths)
    return [path.name.removeprefix(PREFIX).removesuffix(".png") for path in paths]


@pytest.fixture
def laq(tiny_spec) -> LAQStage:
    """The tiny LAQ stage after a few steps (untrained, its residual decoder ignores the latent)."""
    LAQStage.prepare_data(tiny_spec)
    torch.manual_seed(0)
    stage = LAQStage(tiny_spec, CPU, seed=0)
    fit_fixed_batch(stage, stage.train_batch(0), steps=8, lr=1e-3)
    return stage


def test_laq_draws_the_reconstruction_the_atlas_code_examples_and_usage(laq, tmp_path):
    paths = drawn(laq, tmp_path)
    assert names(paths, tmp_path) == ["reconstruction", "atlas", "code_examples", "code_usage"]
    for path in paths:
        check_png(path)


def test_the_atlas_decodes_each_code_of_each_token_differently(laq):
    """Every code changes the decoded frame differently, and a pair's own codes (kept by evaluate()) decode to its
    reconstruction."""
    val = laq.data.val
    frame_t, frame_tk = val["frame_t"][:3], val["frame_tk"][:3]
    evaluate_stage(laq, "fp32")  # leaves the model in eval mode
    own = laq.val_codes[:3]
    with torch.no_grad():
        batch = to_float({"frame_t": frame_t, "frame_tk": frame_tk}, CPU)
        assert laq.model.codes(batch["frame_t"], batch["frame_tk"]).tolist() == own.tolist()
        every = np.tile(np.arange(CODEBOOK), (TOKENS, 1))
        changes = laq.atlas_changes(frame_t, own, every)
        reconstruction = images(laq.model(batch["frame_t"], batch["frame_tk"]).reconstruction)
    assert changes.shape == (3, TOKENS, CODEBOOK, *frame_t.shape[1:])
    for f in range(3):
        for j in range(TOKENS):
            own_change = changes[f, j, own[f, j]]
            np.testing.assert_allclose(own_change + frame_t[f] / 255, reconstruction[f], atol=1e-5)
            for a in range(CODEBOOK):
                for b in range(a):
                    assert np.abs(changes[f, j, a] - changes[f, j, b]).max() > 1e-3, (f, j, a, b)


def test_the_atlas_frames_the_pairs_own_code_in_red(tmp_path):
    """One red frame per row, around the column of the pair's own code of that token."""
    frames = np.full((1, 16, 16, 3), 128, np.uint8)
    changes = np.random.default_rng(0).uniform(-0.2, 0.2, (1, 2, 3, 16, 16, 1)).repeat(3, -1)  # grey
    own = np.array([[7, 3]])  # token 0: its last code shown; token 1: its first
    path = pictures.atlas(tmp_path / "atlas.png", frames, changes, np.tile([3, 5, 7], (2, 1)), own, "atlas")
    image = check_png(path).astype(int)
    rows, columns = np.nonzero(np.abs(image - [214, 39, 40]).sum(-1) < 30)  # the red of pictures.HIGHLIGHT
    middle = (rows.min() + rows.max()) / 2
    token_0, token_1 = columns[rows < middle], columns[rows > middle]
    assert token_0.size == token_1.size > 4 * 16  # a frame around each of two thumbnails of one size
    assert token_0.min() > token_1.max()  # code 7 is right of code 3


def test_a_continuous_latent_draws_the_reconstruction_only(shard_cache, tmp_path):
    spec = tiny_spec_dict(shard_cache)
    spec["model"]["quantizer"] = {"name": "Identity", "dim": 8, "num_tokens": 2}
    spec = check_spec(spec)
    LAQStage.prepare_data(spec)
    paths = drawn(LAQStage(spec, CPU, seed=0), tmp_path)
    assert names(paths, tmp_path) == ["reconstruction"]
    check_png(paths[0])


def test_confusion_matrices_count_predictions_per_true_code_and_rows_sum_to_1():
    true = np.array([[0, 1], [0, 1], [0, 2], [3, 1]])
    predicted = np.array([[0, 1], [2, 1], [0, 1], [3, 3]])
    matrices = confusion_matrices(true, predicted, np.arange(4))
    assert matrices.shape == (2, 4, 4)
    np.testing.assert_allclose(matrices[0, 0], [2 / 3, 0, 1 / 3, 0])
    np.testing.assert_allclose(matrices[0, 3], [0, 0, 0, 1])
    np.testing.assert_allclose(matrices[1, 1], [0, 2 / 3, 0, 1 / 3])
    assert not matrices[0, 1].any() and not matrices[0, 2].any()  # codes that never occur
    np.testing.assert_allclose(matrices.sum(-1), [[1, 0, 0, 1], [0, 1, 1, 0]])


def test_true_code_ranks_give_top_k_accuracy():
    logits = torch.tensor([[[0.1, 0.9, 0.5, 0.0]], [[0.7, 0.1, 0.2, 0.3]], [[0.0, 0.0, 0.0, 1.0]]])
    codes = torch.tensor([[1], [3], [0]])
    assert true_code_ranks(logits, codes).flatten().tolist() == [0, 1, 1]
    tied = torch.zeros(1, 1, 4)  # constant logits: right only where argmax's pick (code 0) is the true code
    assert [true_code_ranks(tied, torch.tensor([[c]])).item() for c in range(4)] == [0, 1, 2, 3]
    assert (true_code_ranks(logits, logits.argmax(-1)) == 0).all()  # rank 0 is the argmax's accuracy


def test_a_confusion_matrix_of_some_codes_keeps_their_rows_shares_of_all_pairs():
    true = np.array([[0], [0], [0], [1]])
    predicted = np.array([[0], [2], [1], [1]])
    matrices = confusion_matrices(true, predicted, np.array([0, 1]))
    np.testing.assert_allclose(
        matrices[0], [[1 / 3, 1 / 3], [0, 1]]
    )  # code 0's third predicted as 2 is not shown


@pytest.fixture(scope="module")
def foundation_spec(labelled_shards, tmp_path_factory) -> dict:
    spec = vla_spec("foundation", labelled_shards, tmp_path_factory.mktemp("run"))
    FoundationStage.prepare_data(spec)
    FoundationStage.prepare(spec)
    return spec


def test_foundation_reports_top3_accuracy_and_draws_confusion_and_topk(foundation_spec, tmp_path):
    torch.manual_seed(0)
    stage = FoundationStage(foundation_spec, CPU, seed=0)
    assert stage.draw(tmp_path, PREFIX) == []  # nothing evaluated yet
    metrics = evaluate_stage(stage, "fp32")
    assert 0 <= metrics["val_token_acc"] <= metrics["val_top3_acc"] <= 1
    assert metrics["val_top3_acc"] > metrics["val_token_acc"] or metrics["val_token_acc"] == 1
    true = stage.data.val["codes"]
    assert stage.val_predicted.shape == true.shape == stage.val_ranks.shape
    assert metrics["val_token_acc"] == pytest.approx((stage.val_predicted == true).mean())
    matrices = confusion_matrices(true, stage.val_predicted, np.arange(CODEBOOK))
    present = np.stack([np.isin(np.arange(CODEBOOK), column) for column in true.T])
    np.testing.assert_allclose(matrices.sum(-1), present.astype(float))
    with torch.no_grad():
        paths = stage.draw(tmp_path, PREFIX)
    assert names(paths, tmp_path) == ["confusion", "topk"]
    for path in paths:
        check_png(path)


@pytest.fixture(scope="module")
def finetune_spec(action_shards, tmp_path_factory) -> dict:
    spec = vla_spec("finetune", action_shards, tmp_path_factory.mktemp("run"), data={"action_chunk": 2})
    FinetuneStage.prepare_data(spec)
    FinetuneStage.prepare(spec)
    return spec


def test_finetune_draws_action_traces_of_whole_held_out_episodes(finetune_spec, action_shards, tmp_path):
    torch.manual_seed(0)
    stage = FinetuneStage(finetune_spec, CPU, seed=0)
    paths = drawn(stage, tmp_path)
    assert names(paths, tmp_path) == ["actions"]  # no closed-loop rollouts: no success chart
    check_png(paths[0])
    held_out = [e for e in read_episodes(shard_urls(action_shards)) if is_val_scene(e.scene, 0.25)][:2]
    assert len(stage.traces) == 2
    for trace, episode in zip(stage.traces, held_out, strict=True):
        assert np.array_equal(trace.true, episode.actions)  # every action of the episode, in order
        assert episode.scene in trace.label and trace.label.startswith("held-out")
        with torch.no_grad():
            first = stage.predict(episode.frames[:1].copy(), [episode.instruction])[0, 0].numpy()
        np.testing.assert_allclose(trace.predicted[0], first, rtol=1e-5, atol=1e-6)
        assert trace.predicted.shape == trace.true.shape


def test_the_success_chart_has_a_bar_per_task_and_one_overall(tmp_path):
    rates = {"reach-v3": 1.0, "push-v3": 0.4, "pick-place-v3": 0.0}
    path = pictures.success(tmp_path / "success.png", rates, overall=0.466, episodes="5 per task")
    image = check_png(path)
    blue = (np.abs(image.astype(int) - [31, 119, 180]).sum(-1) < 30).sum(0)  # bar pixels per column
    grey = (np.abs(image.astype(int) - [85, 85, 85]).sum(-1) < 30).sum(0)
    assert np.flatnonzero(blue).size > np.flatnonzero(grey).size > 0  # the longest task bar beats the mean
