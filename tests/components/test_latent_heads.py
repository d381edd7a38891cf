"""The latent heads on tiny real backbones: ActTokens' tokens in the tokenizer, teacher forcing, greedy decoding
(each code the argmax given the codes decoded before it), the states stage 3 reads, and which weights train."""

import pytest
import torch
from torch.nn import functional as F

from hlrp_lab.components.latent_head.config import ActTokensConfig
from hlrp_lab.components.vla.tokenizer import load_tokenizer, local_tokenizer, with_tokens
from hlrp_lab.stages.vla import added_tokens, build_vla

pytestmark = pytest.mark.usefixtures("one_thread")

INSTRUCTIONS = ["push the red block left", "open the drawer now please", "reach"]
TOKENS, CODEBOOK = 3, 5
ACT = {"name": "ActTokens", "num_tokens": TOKENS, "codebook_size": CODEBOOK}
SMALL = {"text_config": {"num_hidden_layers": 1}}  # families name their vision depth differently


def build(family: str = "SmolVLM", **vla):
    torch.manual_seed(0)
    spec = {"model": {"vla": {"name": family, "config": SMALL, **vla}, "latent_head": ACT}}
    return build_vla(spec, with_tokens(local_tokenizer(INSTRUCTIONS), added_tokens(spec)))


def frames() -> torch.Tensor:
    return torch.rand(len(INSTRUCTIONS), 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_act_tokens_are_one_special_token_per_code_and_survive_a_save(tmp_path):
    config = ActTokensConfig(num_tokens=TOKENS, codebook_size=CODEBOOK)
    codes = [f"<ACT_{i}>" for i in range(CODEBOOK)]
    assert config.added_tokens() == codes and config.prompt_suffix() == ""
    tokenizer = with_tokens(local_tokenizer(INSTRUCTIONS), config.added_tokens())
    assert tokenizer.extra_special_tokens == codes
    ids = tokenizer.convert_tokens_to_ids(codes)
    assert len(set(ids)) == CODEBOOK and tokenizer.unk_token_id not in ids
    assert tokenizer("reach<ACT_4><ACT_0>")["input_ids"][-2:] == [ids[4], ids[0]]  # one token each, no split
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.extra_special_tokens == codes and loaded.convert_tokens_to_ids(codes) == ids


@pytest.mark.parametrize("family", ["SmolVLM", "Qwen2VL"])
def test_greedy_codes_are_those_teacher_forcing_would_choose(family):
    """Each greedy code is the argmax given the codes decoded before it: feeding the decoded codes back as
    teacher-forced codes gives the same logits; ``query_states`` are the states those logits come from."""
    model = build(family).eval()
    with torch.no_grad():
        greedy = model(frames(), INSTRUCTIONS)
        codes = greedy.argmax(-1)
        forced = model(frames(), INSTRUCTIONS, codes)
        states = model.query_states(frames(), INSTRUCTIONS)
    assert greedy.shape == (len(INSTRUCTIONS), TOKENS, CODEBOOK)
    assert codes.min() >= 0 and codes.max() < CODEBOOK
    torch.testing.assert_close(forced, greedy, atol=1e-4, rtol=1e-4)
    assert states.shape == (len(INSTRUCTIONS), TOKENS, model.backbone.hidden_size)
    torch.testing.assert_close(model.latent_head(states), greedy, atol=1e-4, rtol=1e-4)


def test_teacher_forcing_conditions_each_code_on_the_codes_before_it():
    model = build().eval()
    codes = torch.tensor([[0, 1, 2], [3, 4, 0], [1, 1, 1]])
    changed = codes.clone()
    changed[:, 1] = (codes[:, 1] + 1) % CODEBOOK
    with torch.no_grad():
        a, b = model(frames(), INSTRUCTIONS, codes), model(frames(), INSTRUCTIONS, changed)
    torch.testing.assert_close(a[:, :2], b[:, :2])  # codes 0 and 1 do not see code 1
    assert (a[:, 2] - b[:, 2]).abs().max() > 1e-4  # code 2 does


def test_the_lm_head_stays_frozen_and_every_trainable_weight_gets_a_gradient():
    """ActTokens scores codes with its own output rows, not the family's language-model head: that head is
    frozen, and the teacher-forced loss reaches every other trainable weight (as DDP and FSDP expect)."""
    model = build().train()
    assert not model.backbone.model.get_output_embeddings().weight.requires_grad
    codes = torch.tensor([[0, 1, 2], [3, 4, 0], [1, 1, 1]])
    logits = model(frames(), INSTRUCTIONS, codes)
    F.cross_entropy(logits.flatten(0, 1), codes.flatten()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    embeddings = model.backbone.model.get_input_embeddings().weight.grad
    act_ids = model.backbone.tokenizer.convert_tokens_to_ids(["<ACT_0>", "<ACT_3>", "<ACT_4>"])
    assert embeddings[act_ids[:2]].abs().sum(1).min() > 0  # fed codes (0, 1, 3, 4 are inputs; 2 is last only)
    assert embeddings[act_ids[2]].abs().sum() > 0


def test_query_states_train_the_backbone_and_not_the_head():
    """Stage 3 reads ``query_states``: its gradient reaches the backbone; the head only chose the codes."""
    model = build().train()
    model.query_states(frames(), INSTRUCTIONS).pow(2).mean().backward()
    assert model.backbone.model.get_input_embeddings().weight.grad.abs().sum() > 0
    assert model.latent_head.proj.weight.grad is None


def test_lora_trains_the_act_token_rows():
    model = build(lora={"r": 4, "alpha": 8, "dropout": 0.0})
    rows = next(p for n, p in model.named_parameters() if "trainable_tokens_delta" in n)
    assert rows.shape[0] == CODEBOOK and rows.requires_grad
    assert model.latent_head.proj.weight.requires_grad
