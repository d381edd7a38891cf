"""The LAQEncoder backbone (stage 1 without stage 2) on a real tiny LAQ run: its encoder starts from the run's
weights, freeze_encoder freezes exactly those, the query positions see the frame and the instruction, blocks
that do not fit the run are refused, and a finetune run trains, pins its LAQ run and reloads through eval."""

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from hlrp_lab.cli.main import app
from hlrp_lab.components.latent_head import LATENT_HEADS
from hlrp_lab.components.vla import VLAS
from hlrp_lab.components.vla.tokenizer import local_tokenizer, with_tokens
from hlrp_lab.experiment.build import dry_build
from hlrp_lab.experiment.lab import run_lab
from hlrp_lab.experiment.plan.spec import planned_spec
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.runs import resolve_reference
from hlrp_lab.spec.check import check_spec
from hlrp_lab.spec.spec_util import Mode
from hlrp_lab.stages.finetune import FinetuneStage
from tests.conftest import tiny_spec_dict
from tests.stages.conftest import LATENT, SIZE, fit_fixed_batch, vla_spec

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
BLOCK = {"name": "LAQEncoder", "hidden_size": 32, "layers": 1, "heads": 2}
# The tiny LAQ's (tests/conftest.py): what `laq: null` needs to build the same encoder.
ARCHITECTURE = {
    "encoder": {"name": "CNNEncoder", "channels": [16, 32]},
    "image_size": SIZE,
    "num_tokens": 2,
    "token_dim": 8,
}
QUERIES = LATENT_HEADS.config(LATENT, "model.latent_head").query_tokens()
INSTRUCTIONS = ["push the red block left", "push the block up"]  # 5 and 4 words


@pytest.fixture(scope="module")
def lab_root(tmp_path_factory) -> Path:
    """A working directory for the module's runs (their data/ folder)."""
    root = tmp_path_factory.mktemp("lab")
    cwd = Path.cwd()
    os.chdir(root)
    try:
        yield root
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def laq_run(lab_root, shard_cache) -> Path:
    """A tiny LAQ trained for 6 steps (`latest:laq`)."""
    spec = tiny_spec_dict(shard_cache)
    spec["train"].update(max_step=6, eval_frequency=6)
    (lab_root / "laq.json").write_text(json.dumps({"laq": spec}))
    return lab_root / run_lab(lab_root / "laq.json", "laq", Mode("train"), {})


def laq_encoder_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    weights = load_file(str(resolve_reference(str(run_dir), "laq").weights))
    return {
        key.removeprefix("encoder."): value for key, value in weights.items() if key.startswith("encoder.")
    }


def backbone(laq: str | None, **change):
    """The backbone of ``laq`` (its architecture), or of the tiny LAQ's architecture from random init."""
    tokenizer = with_tokens(local_tokenizer(INSTRUCTIONS), QUERIES)
    block = {**BLOCK, "laq": laq, **(ARCHITECTURE if laq is None else {}), **change}
    torch.manual_seed(0)
    return VLAS.build(block, "model.vla", tokenizer=tokenizer, query_tokens=QUERIES)


def frozen(module: torch.nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if not p.requires_grad}


def test_the_encoder_is_the_laq_runs_and_null_builds_it_from_random_init(laq_run):
    expected = laq_encoder_weights(laq_run)
    for block in ({}, ARCHITECTURE):  # the run's architecture, or the same given in the block
        loaded = backbone(str(laq_run), **block).encoder.state_dict()
        assert set(loaded) == set(expected) and len(expected) > 4
        assert all(torch.equal(loaded[key], expected[key]) for key in expected)
    control = backbone(None).encoder.state_dict()
    assert {key: value.shape for key, value in control.items()} == {k: v.shape for k, v in expected.items()}
    assert not torch.equal(control["convs.0.0.weight"], expected["convs.0.0.weight"])


def test_freeze_encoder_freezes_exactly_the_encoder(laq_run):
    trained = backbone(str(laq_run))
    assert frozen(trained) == {"encoder.head.weight", "encoder.head.bias"}  # the action read-out: unused
    kept = backbone(str(laq_run), freeze_encoder=True)
    assert frozen(kept) == {f"encoder.{name}" for name, _ in kept.encoder.named_parameters()}
    for model in (trained, kept):
        ids, mask = model.encode(INSTRUCTIONS, "".join(QUERIES))
        model(torch.rand(2, 3, SIZE, SIZE), ids, mask)[:, -len(QUERIES) :].square().sum().backward()
        reached = {
            name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
        }
        assert reached == {name for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "encoder",
    [
        ARCHITECTURE["encoder"],
        {"name": "ViTEncoder", "patch_size": 8, "dim": 32, "depth": 1, "heads": 2},
        {"name": "ViTEncoder", "patch_size": 8, "dim": 32, "depth": 1, "heads": 2, "temporal_depth": 1},
    ],
    ids=["cnn", "joint-vit", "factorized-vit"],
)
def test_every_trainable_parameter_gets_a_gradient_and_only_those(encoder):
    """What DDP and FSDP need; the frozen ones are the encoder's latent action read-out (unused here) and the
    joint ViT's change embedding weights (the change of (t, t) is zero)."""
    model = backbone(None, encoder=encoder)
    ids, mask = model.encode(INSTRUCTIONS, "".join(QUERIES))
    model(torch.rand(2, 3, SIZE, SIZE), ids, mask)[:, -len(QUERIES) :].square().sum().backward()
    reached = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert reached == {name for name, p in model.named_parameters() if p.requires_grad}
    assert frozen(model) and all(name.startswith("encoder.") for name in frozen(model))


def test_the_query_positions_see_the_frame_and_the_instruction(laq_run):
    model = backbone(str(laq_run)).eval()
    ids, mask = model.encode(INSTRUCTIONS, "".join(QUERIES))
    assert mask[0].all() and mask[1].tolist() == [0] + [1] * (mask.shape[1] - 1)  # left-padded: queries last
    assert torch.equal(ids[0, -len(QUERIES) :], ids[1, -len(QUERIES) :])
    frames = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        states = model(frames, ids, mask)
        other_frames = model(frames.flip(0), ids, mask)
        other_words = model(frames, ids.flip(0), mask.flip(0))
        larger = model(torch.nn.functional.interpolate(frames, size=2 * SIZE), ids, mask)
    assert states.shape == (2, (SIZE // 4) ** 2 + ids.shape[1], BLOCK["hidden_size"])
    queries = slice(-len(QUERIES), None)
    assert (states[:, queries] - other_frames[:, queries]).abs().amax() > 1e-3
    assert (states[:, queries] - other_words[:, queries]).abs().amax() > 1e-3
    assert larger.shape == states.shape and larger.isfinite().all()  # resized to the encoder's 32 px


def test_a_block_that_does_not_fit_the_laq_run_is_refused(laq_run, lab_root):
    name = laq_run.name
    with pytest.raises(SpecError, match=rf"^model\.vla\.encoder: .*but the LAQ run {name} has .*\[16, 32\]"):
        backbone(str(laq_run), encoder={"name": "CNNEncoder", "channels": [16, 64]})
    with pytest.raises(
        SpecError,
        match=rf"^model\.vla\.token_dim: 16, but the LAQ run {name} has 8; leave model\.vla\.token_dim",
    ):
        backbone(str(laq_run), token_dim=16)
    with pytest.raises(SpecError, match=r"^model\.vla\.laq: no completed non-dev run of 'nothing'"):
        backbone("latest:nothing")
    with pytest.raises(SpecError, match=r"^model\.vla\.max_text_tokens: the prompt of 'push .* has 8 tokens"):
        backbone(None, max_text_tokens=4).encode(INSTRUCTIONS, "".join(QUERIES))


def test_the_dry_build_checks_the_laq_run_without_loading_it(laq_run, action_shards, lab_root):
    spec = vla_spec(
        "finetune", action_shards, lab_root / "dry", model={"vla": {**BLOCK, "laq": "latest:laq"}}
    )
    assert dry_build(spec) is spec
    with torch.device("meta"):
        model = FinetuneStage.build_model(spec)
    assert all(p.is_meta for p in model.parameters())
    spec = check_spec(
        {**spec, "model": {**spec["model"], "vla": {**spec["model"]["vla"], "image_size": 2 * SIZE}}}
    )
    with pytest.raises(
        SpecError, match=r"^model\.vla\.image_size: 64, but the LAQ run laq_\S+ has 32; leave"
    ):
        dry_build(spec)


def test_the_laq_null_control_learns_from_random_init(laq_run, action_shards, lab_root):
    control = {**BLOCK, "laq": None, **ARCHITECTURE}
    spec = vla_spec("finetune", action_shards, lab_root / "control", model={"vla": control})
    FinetuneStage.prepare_data(spec)
    FinetuneStage.prepare(spec)
    torch.manual_seed(0)
    stage = FinetuneStage(spec, CPU, seed=0)
    encoder = stage.model.vla.backbone.encoder.state_dict()
    assert not torch.equal(encoder["convs.0.0.weight"], laq_encoder_weights(laq_run)["convs.0.0.weight"])
    losses = fit_fixed_batch(stage, stage.train_batch(0), steps=40, lr=3e-3)
    assert all(map(math.isfinite, losses)) and losses[-1] < 0.7 * losses[0]  # about 0.5 x


def test_a_finetune_run_trains_pins_its_laq_run_and_reloads_through_eval(laq_run, action_shards, lab_root):
    """With a frozen encoder: the run's `best` weights hold the LAQ run's encoder as it was; eval reloads
    them and scores what training scored."""
    spec = {
        "stage": "finetune",
        "data": {
            "shards": str(action_shards),
            "image_size": SIZE,
            "pairs": "pair",
            "action_chunk": 2,
            "batch_size": 8,
            "num_workers": 0,
            "val_split": 0.25,
            "val_pairs": 16,
        },
        "model": {
            "vla": {**BLOCK, "laq": "latest:laq", "freeze_encoder": True},
            "latent_head": LATENT,
            "action_head": {"name": "MLPRegression", "hidden": 32},
        },
        "optim": {"name": "AdamW", "lr": 1e-3},
        "train": {"max_step": 8, "log_frequency": 4, "eval_frequency": 4, "pictures": False},
        "meta": {"max_session": 1, "random_seed": 0},
    }
    (lab_root / "ft.json").write_text(json.dumps({"ft": spec}))
    run_dir = lab_root / run_lab(lab_root / "ft.json", "ft", Mode("train"), {})
    saved = json.loads((run_dir / "info" / "ft_spec.json").read_text())["ft"]
    assert saved["model"]["vla"]["laq"] == f"data/{laq_run.name}"  # latest:laq, pinned when the run started
    history = pd.read_csv(run_dir / "info" / "ft_t0_s0_session_metrics.csv")
    scores = history["val_action_mse"].dropna()
    assert len(scores) == 2 and all(map(math.isfinite, scores)) and history["step"].max() == 8
    best = load_file(str(run_dir / "model" / "ft_t0_s0_best.safetensors"))
    expected = laq_encoder_weights(laq_run)
    assert all(torch.equal(best[f"vla.backbone.encoder.{key}"], value) for key, value in expected.items())
    run_lab(lab_root / "ft.json", "ft", Mode("eval", run_dir), {})
    evaluated = json.loads((run_dir / "info" / "ft_t0_eval_metrics.json").read_text())["mean"]
    assert evaluated["val_action_mse"] == pytest.approx(scores.min(), rel=1e-5)


@pytest.mark.parametrize(
    ("finetune", "laq"), [("ft_laq_encoder", "laq_mw_cpu"), ("ft_debug_laq_encoder", "laq_debug")]
)
def test_the_shipped_specs_start_from_their_laq_spec_alone(finetune, laq):
    """No foundation run, the LAQ spec's encoder, and frames of the size it was trained on (not resized)."""
    spec = check_spec(json.loads((ROOT / "specs" / "finetune.json").read_text())[finetune])
    laq_spec = check_spec(json.loads((ROOT / "specs" / "laq.json").read_text())[laq])
    vla = spec["model"]["vla"]
    assert (
        vla["name"] == "LAQEncoder" and vla["laq"] == f"latest:{laq}" and spec["train"]["init_from"] is None
    )
    assert all(vla[key] is None for key in ARCHITECTURE)  # the run's
    assert spec["data"]["image_size"] == laq_spec["data"]["image_size"]


def test_the_memory_plan_counts_the_transformer_over_frame_and_prompt(laq_run):
    """`spec plan` of the shipped LAQEncoder spec on the run: the parameters of the real build, and the
    transformer's tokens are the frame's cells, the instruction's and the query tokens."""
    spec_file, sets = ROOT / "specs" / "finetune.json", {"model.vla.laq": str(laq_run)}
    args = ["spec", "plan", str(spec_file), "ft_debug_laq_encoder", "--json", "--instruction-tokens", "10"]
    result = CliRunner().invoke(app, [*args, "-s", f"model.vla.laq={laq_run}"])
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.output)

    model = FinetuneStage.build_model(planned_spec(spec_file, "ft_debug_laq_encoder", sets, ranks=1))
    assert numbers["params"] == sum(p.numel() for p in model.parameters())
    backbone = model.vla.backbone
    prompt = len(backbone.tokenizer(model.vla.suffix)["input_ids"])
    [group] = numbers["block_groups"]
    assert group["part"] == "language" and group["tokens"] == backbone.frame_position.shape[1] + prompt + 10
    assert numbers["gb"]["activations"] > 0
