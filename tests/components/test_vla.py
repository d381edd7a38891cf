"""VLA backbones built by transformers from small configs: prompts, padding, the pretrained path through a
local save_pretrained directory, a hub id that cannot be reached, and the latent queries."""

import os
import subprocess
import sys

import pytest
import torch

from hlrp_lab.components.latent_head import LATENT_HEADS
from hlrp_lab.components.vla import VLAS
from hlrp_lab.components.vla.tokenizer import (
    load_tokenizer,
    local_tokenizer,
    pretrained_tokenizer,
    with_tokens,
)
from hlrp_lab.stages.vla import prepare_tokenizer, run_tokenizer

FAMILIES = ["SmolVLM", "Qwen2VL", "Qwen25VL"]
QUERIES = ["<latent_0>", "<latent_1>"]
INSTRUCTIONS = ["push the red block left", "open the drawer now please", "reach"]


def tokenizer():
    return with_tokens(local_tokenizer(INSTRUCTIONS), QUERIES)


def build(name: str, seed: int = 0, tok=None, **block):
    torch.manual_seed(seed)
    return VLAS.build({"name": name, **block}, "model.vla", tokenizer=tok or tokenizer()).eval()


def frames(count: int = 3, size: int = 48) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", FAMILIES)
def test_prompt_is_image_block_instruction_queries_left_padded(name):
    model = build(name)
    ids, mask = model.encode(INSTRUCTIONS, "".join(QUERIES))
    tokens = [model.tokenizer.convert_ids_to_tokens(row) for row in ids.tolist()]
    assert all(row[-2:] == QUERIES for row in tokens)
    assert tokens[2][: mask[2].tolist().index(1)] == ["<pad>"] * (len(tokens[2]) - int(mask[2].sum()))
    assert tokens[0].count(model.token(model.model.config.image_token_id)) == 16  # 64 px, patch 8, merge 2
    assert "drawer" in tokens[1] and "<unk>" not in tokens[1]


@pytest.mark.parametrize("name", FAMILIES)
def test_hidden_states_of_a_padded_prompt_equal_those_of_it_alone(name):
    model = build(name)
    images = frames()
    with torch.no_grad():
        ids, mask = model.encode(INSTRUCTIONS, "".join(QUERIES))
        batch = model(images, ids, mask)
        ids, mask = model.encode(INSTRUCTIONS[2:], "".join(QUERIES))
        alone = model(images[2:], ids, mask)
    assert batch.shape[-1] == model.hidden_size == 64
    torch.testing.assert_close(batch[2, -2:], alone[0, -2:], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", FAMILIES)
def test_pretrained_loads_a_local_save_pretrained_directory(name, tmp_path):
    built = build(name, seed=3)
    built.model.save_pretrained(tmp_path)
    built.tokenizer.save_pretrained(tmp_path)
    loaded_tokenizer = pretrained_tokenizer(str(tmp_path))
    assert loaded_tokenizer.convert_tokens_to_ids(QUERIES) == built.tokenizer.convert_tokens_to_ids(QUERIES)
    loaded = build(name, seed=4, pretrained=str(tmp_path), tok=loaded_tokenizer)
    images = frames()
    with torch.no_grad():
        expected = built(images, *built.encode(INSTRUCTIONS, "".join(QUERIES)))
        actual = loaded(images, *loaded.encode(INSTRUCTIONS, "".join(QUERIES)))
    torch.testing.assert_close(actual, expected)


def test_a_missing_local_directory_names_the_key(tmp_path):
    with pytest.raises(Exception, match="model.vla.pretrained: .*absent is not a directory"):
        build("SmolVLM", pretrained=str(tmp_path / "absent"))


def test_an_unreachable_hub_id_fails_fast_naming_the_key():
    """The real from_pretrained path, up to the network: offline, a hub id that is not cached fails at once."""
    code = (
        "from hlrp_lab.components.vla.tokenizer import pretrained_tokenizer\n"
        "from hlrp_lab.components.vla.base import load_pretrained\n"
        "from transformers import SmolVLMForConditionalGeneration as M\n"
        "for load in (lambda: pretrained_tokenizer('HuggingFaceTB/SmolVLM-256M-Instruct'),\n"
        "             lambda: load_pretrained(M, 'HuggingFaceTB/SmolVLM-256M-Instruct', None)):\n"
        "    try:\n"
        "        load()\n"
        "    except Exception as err:\n"
        "        print(type(err).__name__, err)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-c", code]
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120, check=False)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stderr[-2000:]
    assert lines[0].startswith("SpecError model.vla.pretrained: cannot load the tokenizer of 'HuggingFaceTB/")
    assert lines[1].startswith("SpecError model.vla.pretrained: cannot load 'HuggingFaceTB/SmolVLM-256M")


def test_frozen_backbone_has_no_trainable_parameters():
    model = build("SmolVLM", freeze=True)
    assert not any(p.requires_grad for p in model.parameters())


def test_tokenizer_round_trip_keeps_the_query_tokens(tmp_path):
    made = tokenizer()
    made.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert (
        loaded("<image>push the red block<latent_1>")["input_ids"]
        == made("<image>push the red block<latent_1>")["input_ids"]
    )
    assert loaded.convert_tokens_to_ids(["<pad>", "<bos>", "<image>"]) == [0, 1, 4]


def test_code_queries_map_hidden_states_to_codebook_logits():
    block = {"name": "CodeQueries", "num_tokens": 3, "codebook_size": 5}
    head = LATENT_HEADS.build(block, "model.latent_head", hidden_size=16)
    assert head(torch.randn(2, 3, 16)).shape == (2, 3, 5)
    assert head.Config(num_tokens=3).query_tokens() == ["<latent_0>", "<latent_1>", "<latent_2>"]


@pytest.mark.parametrize(("name", "size", "fit"), [("SmolVLM", 40, 48), ("Qwen2VL", 72, 80)])
def test_a_frame_size_that_does_not_split_into_patches_names_the_fix(name, size, fit):
    with pytest.raises(Exception, match=rf"model.vla.image_size: {size} px .* -s model.vla.image_size={fit}"):
        build(name, image_size=size)


def test_a_pretrained_tokenizer_without_a_pad_token_pads_with_its_eos(tmp_path):
    no_pad = local_tokenizer(INSTRUCTIONS)
    no_pad.pad_token = None
    no_pad.save_pretrained(tmp_path / "model")
    spec = {
        "meta": {"run_dir": str(tmp_path / "run"), "spec_name": "x", "trial": 0},
        "model": {
            "vla": {"pretrained": str(tmp_path / "model")},
            "latent_head": {"name": "CodeQueries", "num_tokens": 2, "codebook_size": 4},
        },
    }
    prepare_tokenizer(spec, urls=[])
    made = run_tokenizer(spec)
    assert made.pad_token == "<eos>" and made.convert_tokens_to_ids(QUERIES) == [len(made) - 2, len(made) - 1]
