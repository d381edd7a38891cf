"""LoRA adapters (peft) on the VLA backbones, the frozen vision tower, adapter-only checkpoints of a pretrained
base and their merge into plain weights; the 7B architecture from the repo's config file on the meta device."""

import pytest
import torch
from safetensors.torch import save_file

from hlrp_lab.components.vla import VLAS
from hlrp_lab.components.vla.lora import merge_lora
from hlrp_lab.components.vla.tokenizer import load_tokenizer, local_tokenizer, with_tokens
from hlrp_lab.experiment.build import dry_build
from hlrp_lab.lib.errors import CheckpointError, SpecError
from hlrp_lab.lib.weights import base_of, file_metadata, kept_weights, load_weights, reloadable_weights
from hlrp_lab.spec.check import check_spec
from hlrp_lab.spec.spec_util import resolve_spec

FAMILIES = ["SmolVLM", "Qwen2VL", "Qwen25VL"]
QUERIES = ["<latent_0>", "<latent_1>"]
LORA = {"r": 4, "alpha": 8, "dropout": 0.0}


def tokenizer():
    return with_tokens(local_tokenizer(["push the block", "open the drawer"]), QUERIES)


def build(name: str, seed: int = 0, **block):
    torch.manual_seed(seed)
    tok = tokenizer()
    return VLAS.build({"name": name, **block}, "model.vla", tokenizer=tok, query_tokens=QUERIES).eval()


def hidden(model) -> torch.Tensor:
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ids, mask = model.encode(["push the block", "open the drawer"], "".join(QUERIES))
    with torch.no_grad():
        return model(images, ids, mask)


def trainable(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def train_adapters(model) -> None:
    """Non-zero adapters (lora_B starts at zero) and changed query rows, as training leaves them."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("name", FAMILIES)
def test_lora_trains_only_adapters_and_the_query_rows(name):
    model = build(name, lora=LORA)
    names = trainable(model)
    assert names and all("lora_" in n or "trainable_tokens_delta" in n for n in names), sorted(names)[:5]
    delta = next(p for n, p in model.named_parameters() if "trainable_tokens_delta" in n)
    assert delta.shape[0] == len(QUERIES)  # the query tokens' embedding rows, nothing else of the vocabulary
    full = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for n, p in model.named_parameters() if n in names) < 0.2 * full


@pytest.mark.parametrize("name", ["SmolVLM", "Qwen25VL"])
def test_a_frozen_vision_tower_gets_no_adapters_and_no_gradient(name):
    vision = build(name, freeze_vision=True)
    tower = vision.vision_tower_name()
    assert not any(n.startswith(tower) for n in trainable(vision.model))
    assert any(n.startswith("model.language_model") or "text_model" in n for n in trainable(vision.model))
    lora = build(name, lora=LORA, freeze_vision=True)
    assert not any(n.startswith(tower) for n, _ in lora.model.named_modules() if n.endswith("lora_A"))
    assert any(n.endswith("lora_A") for n, _ in lora.model.named_modules())


def test_freeze_and_lora_together_is_a_spec_error():
    with pytest.raises(SpecError, match="freeze.*lora"):
        check_spec(
            resolve_spec(
                "specs/foundation.json", "vla_debug", {"model.vla.freeze": True, "model.vla.lora": LORA}
            )
        )


@pytest.mark.parametrize("name", FAMILIES)
def test_merged_weights_load_into_the_model_without_lora_and_give_the_same_states(name):
    model = build(name, lora=LORA)
    train_adapters(model)
    adapted = hidden(model)
    assert merge_lora(model) > 0
    plain = build(name, seed=1)  # other random weights, replaced by the merged ones
    assert set(model.state_dict()) == set(plain.state_dict())
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(hidden(plain), adapted, atol=1e-5, rtol=1e-4)


@pytest.fixture
def base_dir(tmp_path):
    """A SmolVLM saved as a `pretrained` directory (with its tokenizer), as a hub download leaves one."""
    base = build("SmolVLM")
    base.model.save_pretrained(tmp_path / "base")
    base.tokenizer.save_pretrained(tmp_path / "base")
    return str(tmp_path / "base")


def test_checkpoints_of_a_lora_model_on_a_pretrained_base_keep_only_what_trains(base_dir, tmp_path):
    model = build("SmolVLM", pretrained=base_dir, lora=LORA)
    train_adapters(model)
    omitted = reloadable_weights(model)
    assert omitted and not any("lora_" in n or "delta" in n for n in omitted)
    kept = kept_weights(model, omitted)
    assert set(kept) == set(model.state_dict()) - omitted
    path = tmp_path / "adapters.safetensors"
    save_file(kept, str(path), metadata={"step": "1", **base_of(model)})
    assert file_metadata(path)["base_model"] == base_dir
    assert path.stat().st_size < 0.3 * sum(p.numel() * 4 for p in model.parameters())

    fresh = build("SmolVLM", seed=3, pretrained=base_dir, lora=LORA)
    load_weights(fresh, path, "cpu")
    torch.testing.assert_close(hidden(fresh), hidden(model))


def test_adapters_refuse_another_base_and_full_weights_name_the_fix(base_dir, tmp_path):
    model = build("SmolVLM", pretrained=base_dir, lora=LORA)
    path = tmp_path / "adapters.safetensors"
    save_file(
        kept_weights(model, reloadable_weights(model)),
        str(path),
        metadata={"step": "1", "base_model": "/elsewhere", "base_revision": ""},
    )
    with pytest.raises(CheckpointError, match="model.vla.pretrained=/elsewhere"):
        load_weights(model, path, "cpu")
    full = tmp_path / "full.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(full), metadata={"step": "1"})
    with pytest.raises(CheckpointError, match="full weights"):
        load_weights(model, full, "cpu")


def test_lora_without_a_pretrained_base_keeps_every_weight():
    model = build("SmolVLM", lora=LORA)  # a random base has no other home than the checkpoint
    assert reloadable_weights(model) == set() and kept_weights(model, reloadable_weights(model)) is model


def test_vla_7b_builds_from_the_repo_config_on_the_meta_device_offline():
    for name in ("vla_7b", "vla_7b_lora"):
        spec = check_spec(resolve_spec("specs/foundation.json", name, {"shards": "/nowhere/*.tar"}))
        dry_build(spec)
    from hlrp_lab.stages.foundation import FoundationStage

    spec = check_spec(resolve_spec("specs/foundation.json", "vla_7b_lora", {"shards": "/x/*.tar"}))
    offline = {**spec["model"]["vla"], "pretrained": None}
    with torch.device("meta"):
        model = FoundationStage.build_model({**spec, "model": {**spec["model"], "vla": offline}})
    backbone = model.backbone.model
    base = sum(p.numel() for n, p in backbone.named_parameters() if "lora_" not in n and "delta" not in n)
    assert base == 8_292_166_656  # Qwen2.5-VL-7B-Instruct, as published
    assert {p.dtype for n, p in backbone.named_parameters() if not p.requires_grad} == {torch.bfloat16}
    assert not any(p.requires_grad for n, p in backbone.named_parameters() if n.startswith("model.visual"))


def test_activation_checkpointing_of_a_lora_model_gives_the_same_adapter_gradients():
    from hlrp_lab.experiment.distributed import checkpoint_blocks

    def adapter_grads(checkpointed: bool) -> dict[str, torch.Tensor]:
        model = build("Qwen25VL", lora=LORA).train()
        train_adapters(model)
        if checkpointed:
            checkpoint_blocks(model)
        images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        ids, mask = model.encode(["push the block", "open the drawer"], "".join(QUERIES))
        model(images, ids, mask).pow(2).mean().backward()
        named = model.named_parameters()
        return {n.replace("_checkpoint_wrapped_module.", ""): p.grad for n, p in named if p.requires_grad}

    plain, checkpointed = adapter_grads(False), adapter_grads(True)
    assert plain.keys() == checkpointed.keys() and all(g is not None for g in plain.values())
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def hub_snapshot(cache, commit: str, seed: int) -> None:
    """A hub download of `lab/tiny-vlm` at ``commit`` as huggingface_hub lays it out in its cache."""
    repo = cache / "models--lab--tiny-vlm"
    base = build("SmolVLM", seed=seed)
    base.model.save_pretrained(repo / "snapshots" / commit)
    base.tokenizer.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


def test_adapters_record_the_hub_commit_of_their_base_and_refuse_a_moved_branch(tmp_path, monkeypatch):
    """`pretrained` as a hub id, offline from a real Hub cache: the checkpoint names the snapshot's commit, and
    once `main` points at another commit the adapters are refused until -s model.vla.revision pins theirs."""
    import huggingface_hub.constants

    cache, first, second = tmp_path / "hub", "a" * 40, "b" * 40
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hub_snapshot(cache, first, seed=0)
    tokenizer = load_tokenizer(cache / "models--lab--tiny-vlm" / "snapshots" / first)

    def on_hub(revision: str | None = None):
        block = {"name": "SmolVLM", "pretrained": "lab/tiny-vlm", "revision": revision, "lora": LORA}
        return VLAS.build(block, "model.vla", tokenizer=tokenizer, query_tokens=QUERIES)

    model = on_hub()
    assert model.base == {"base_model": "lab/tiny-vlm", "base_revision": first}
    adapters = tmp_path / "adapters.safetensors"
    save_file(
        kept_weights(model, reloadable_weights(model)),
        str(adapters),
        metadata={"step": "1", **base_of(model)},
    )

    hub_snapshot(cache, second, seed=1)  # main moves on
    moved = f"at revision {first}, this base is at {second}; pass -s model.vla.revision={first}"
    with pytest.raises(CheckpointError, match=moved):
        load_weights(on_hub(), adapters, "cpu")
    load_weights(on_hub(revision=first), adapters, "cpu")
