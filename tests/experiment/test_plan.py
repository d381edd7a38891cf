"""The memory planner (`hlrp-lab spec plan`): counts and bytes per rank against a hand count on small models,
the activation estimate against Korthikanti et al.'s formula, and the command on the lab's specs. Every model
is built on the meta device: nothing here allocates a model's memory."""

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from hlrp_lab.cli.main import app
from hlrp_lab.experiment.plan.count import count_model
from hlrp_lab.experiment.plan.memory import (
    CUDA_CONTEXT,
    FRAGMENTATION,
    GB,
    Setup,
    activation_bytes,
    block_activation_bytes,
    estimate,
)
from hlrp_lab.experiment.plan.spec import planned_spec
from hlrp_lab.experiment.plan.suggest import suggestions
from hlrp_lab.stages import STAGES

ROOT = Path(__file__).parents[2]
FOUNDATION = str(ROOT / "specs" / "foundation.json")
LAQ = str(ROOT / "specs" / "laq.json")
runner = CliRunner()

# A hand count of the tiny model below (torch's pre-norm TransformerEncoderLayer, d_model 8, feedforward 32):
EMBED = 4 * 8 + 8  # Linear(4, 8)
BLOCK = (
    (3 * 8 * 8 + 3 * 8) + (8 * 8 + 8) + (8 * 32 + 32) + (32 * 8 + 8) + 2 * (8 + 8)
)  # qkv, out, mlp, 2 norms
HEAD = 8 * 3 + 3  # Linear(8, 3)
PARAMS = EMBED + 2 * BLOCK + HEAD
MATMUL = {"embed": 4 * 8, "block": 3 * 8 * 8 + 8 * 8 + 8 * 32 + 32 * 8, "head": 8 * 3}  # what autocast casts


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        layer = {"d_model": 8, "nhead": 2, "dim_feedforward": 32, "batch_first": True, "norm_first": True}
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(**layer) for _ in range(2))
        self.head = nn.Linear(8, 3)


def tiny(frozen_embed: bool = False, dtype: torch.dtype = torch.float32, tokens: int | None = 10):
    with torch.device("meta"):
        model = Tiny().to(dtype)
    if frozen_embed:
        model.embed.requires_grad_(False)
    return count_model(model, [("blocks", model.blocks, tokens)])


def setup(**changes) -> Setup:
    base = {
        "ranks": 1,
        "strategy": "none",
        "precision": "fp32",
        "optimizer": "AdamW",
        "optimizer_states": 2,
        "batch_size": 24,
        "grad_accum": 1,
    }
    return Setup(**{**base, **changes})


def test_hand_count_of_a_tiny_model():
    assert BLOCK == 872 and PARAMS == 1811
    count = tiny()
    assert (count.params, count.trainable) == (PARAMS, PARAMS)
    assert (count.weight_bytes, count.trainable_bytes) == (4 * PARAMS, 4 * PARAMS)
    assert count.dtypes == {"float32": PARAMS}
    assert (count.blocks, count.largest_block, count.root) == (2, BLOCK, EMBED + HEAD)
    assert count.autocast_trainable == MATMUL["embed"] + 2 * MATMUL["block"] + MATMUL["head"]

    frozen = tiny(frozen_embed=True)
    assert (frozen.params, frozen.trainable) == (PARAMS, PARAMS - EMBED)
    assert frozen.trainable_bytes == 4 * (PARAMS - EMBED)
    assert (
        frozen.autocast_trainable == 2 * MATMUL["block"] + MATMUL["head"]
    )  # the frozen embed is outside blocks
    assert frozen.autocast_frozen == 0

    half = tiny(dtype=torch.bfloat16)
    assert half.dtypes == {"bfloat16": PARAMS} and half.weight_bytes == 2 * PARAMS
    assert half.largest_block_bytes == 2 * BLOCK and half.autocast_trainable == 0  # nothing to cast


@pytest.mark.parametrize("frozen_embed", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bytes_per_rank_for_none_ddp_and_fsdp(frozen_embed, dtype):
    count = tiny(frozen_embed, dtype)
    size = 4 if dtype == torch.float32 else 2
    params, trainable = PARAMS * size, (PARAMS - EMBED * frozen_embed) * size
    block_trainable = BLOCK

    none = estimate(count, setup()).rows
    assert none["weights"] == params
    assert none["gradients"] == trainable
    assert none["optimizer states"] == 2 * trainable  # AdamW: exp_avg and exp_avg_sq in the parameter's dtype

    ddp = estimate(count, setup(ranks=4, strategy="ddp")).rows
    assert ddp["weights"] == params
    assert ddp["gradients"] == 2 * trainable  # + DDP's gradient buckets (no gradient_as_bucket_view)
    assert ddp["optimizer states"] == 2 * trainable

    fsdp = estimate(count, setup(ranks=4, strategy="fsdp")).rows  # fp32 compute: no mixed precision
    root = (EMBED + HEAD) * size
    assert fsdp["weights"] == math.ceil(params / 4) + root + 2 * BLOCK * size
    assert fsdp["gradients"] == math.ceil(trainable / 4) + block_trainable * size
    assert fsdp["optimizer states"] == math.ceil(2 * trainable / 4)

    mixed = estimate(count, setup(ranks=4, strategy="fsdp", precision="bf16")).rows
    assert mixed["weights"] == math.ceil(params / 4) + (EMBED + HEAD) * 2 + 2 * BLOCK * 2  # gathered in bf16
    assert mixed["gradients"] == math.ceil(trainable / 4) + block_trainable * (
        2 + 4
    )  # bf16 grads, fp32 reduce
    assert mixed["autocast copies"] == 0

    offload = estimate(count, setup(ranks=4, strategy="fsdp", precision="bf16", cpu_offload=True)).rows
    assert offload["weights"] == (EMBED + HEAD) * 2 + 2 * BLOCK * 2
    assert offload["optimizer states"] == 0


def test_autocast_keeps_bf16_copies_of_fp32_weights_without_fsdp():
    count = tiny()
    copies = 2 * (MATMUL["embed"] + 2 * MATMUL["block"] + MATMUL["head"])
    assert estimate(count, setup(precision="bf16")).rows["autocast copies"] == copies
    assert estimate(count, setup(ranks=2, strategy="ddp", precision="bf16")).rows["autocast copies"] == copies
    assert estimate(count, setup(precision="fp32")).rows["autocast copies"] == 0
    assert estimate(tiny(dtype=torch.bfloat16), setup(precision="bf16")).rows["autocast copies"] == 0


def test_optimizer_states_follow_the_optimizer():
    count = tiny()
    assert estimate(count, setup(optimizer="SGD", optimizer_states=0)).rows["optimizer states"] == 0
    assert estimate(count, setup(optimizer="SGD", optimizer_states=1)).rows["optimizer states"] == 4 * PARAMS


def test_activations_match_korthikanti_for_a_gpt_block():
    """s*b*h*(34 + 5as/h) bytes per layer in 16-bit (eager attention), 34sbh with SDPA/flash attention."""
    count = tiny(tokens=10)
    (group,) = count.groups
    assert (group.hidden, group.heads, group.mlp, group.gated, group.layers) == (8, 2, 32, False, 2)
    assert (group.attentions, group.norms, group.composite_norms) == (1, 2, 0)  # torch's fused LayerNorm
    s, b, h, a = 10, 3, 8, 2
    assert block_activation_bytes(group, b, "bf16", "sdpa") == s * b * h * 34
    assert block_activation_bytes(group, b, "bf16", "eager") == s * b * h * (34 + 5 * a * s / h)
    assert block_activation_bytes(group, b, "fp32", "sdpa") == s * b * h * (2 * 32 + 2)  # masks stay 1 byte

    plain = setup(precision="bf16", batch_size=12, ranks=4, strategy="ddp")  # micro-batch 3
    total, parts = activation_bytes(count, plain)
    assert total == parts["blocks"] == 2 * 34 * s * b * h
    checkpointed, parts = activation_bytes(
        count, Setup(**{**plain.__dict__, "activation_checkpointing": True})
    )
    # each block's input (fp32: the residual stream of fp32 weights under autocast) + one block recomputed
    assert checkpointed == 2 * (4 * s * b * h) + 34 * s * b * h and checkpointed < total
    half = Setup(**{**plain.__dict__, "activation_checkpointing": True})
    halved, _ = activation_bytes(tiny(dtype=torch.bfloat16, tokens=10), half)
    assert halved == 2 * (2 * s * b * h) + 34 * s * b * h  # bf16 weights: a bf16 residual stream


def test_activations_of_a_gated_mlp_and_grouped_attention():
    config = LlamaConfig(
        hidden_size=16,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=32,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    count = count_model(model, [("language", model, 12)])
    # embeddings 32x16, per layer q 16x16, k and v 16x8, o 16x16, gate/up/down 16x40, two norms; final norm; head
    layer = 16 * 16 + 2 * 16 * 8 + 16 * 16 + 3 * 16 * 40 + 2 * 16
    assert count.params == 32 * 16 + 2 * layer + 16 + 16 * 32
    (group,) = count.groups
    assert (group.block, group.hidden, group.mlp, group.gated, group.heads) == (
        "LlamaDecoderLayer",
        16,
        40,
        True,
        4,
    )
    s, b = 12, 2
    assert group.composite_norms == 2  # LlamaRMSNorm: fp32 Python ops, keeping 8sbh more than a fused kernel
    assert block_activation_bytes(group, b, "bf16", "sdpa") == s * b * (18 * 16 + 8 * 40 + 2 * 8 * 16)


def test_suggestions_each_fit_or_come_closest_together():
    count, spec = tiny(), {"stage": "laq", "model": {}, "train": {"distributed": {"strategy": "auto"}}}
    roomy = setup(precision="bf16", batch_size=4096, gpu_memory=(CUDA_CONTEXT + 20_000_000) / GB)
    assert not estimate(count, roomy).fits
    found = {s.flags: s.estimate for s in suggestions(count, roomy, spec, gpus=1, nodes=1)}
    assert all(e.fits for e in found.values()) and "-s train.activation_checkpointing=true" in found
    assert "-s train.grad_accum=2" in found  # the least accumulation that fits, same global batch

    tight = setup(precision="bf16", batch_size=4096, gpu_memory=(CUDA_CONTEXT + 1000) / GB)
    (closest,) = suggestions(count, tight, spec, gpus=1, nodes=1)
    assert not closest.estimate.fits and closest.estimate.total < estimate(count, tight).total
    assert "activation_checkpointing" in closest.flags and "grad_accum" in closest.flags


def test_blocks_without_known_tokens_are_named_not_guessed():
    count = tiny(tokens=None)
    total, _ = activation_bytes(count, setup())
    assert total == 0 and "tokens unknown" in count.notes[0]


def plan(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["spec", "plan", *args])
    return result.exit_code, result.output


def real_counts(spec_name: str) -> tuple[int, int]:
    """Parameters and trainable parameters of the spec's model built for real, on the CPU."""
    spec = planned_spec(FOUNDATION, spec_name, {}, ranks=1)
    model = STAGES.get(spec["stage"], "stage").build_model(spec)
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def test_plan_of_vla_debug_text_and_json():
    params, trainable = real_counts("vla_debug")  # the meta-device count must match the real model's
    code, out = plan(FOUNDATION, "vla_debug", "--gpus", "4")
    assert code == 0, out
    assert f"parameters     {params:,}" in out and f"trainable      {trainable:,}" in out
    assert "fsdp over 4 ranks (train.distributed.strategy auto)" in out
    assert "micro-batch    8 per rank" in out
    assert "fits in 80 GB per GPU with" in out and "assumptions:" in out

    code, out = plan(FOUNDATION, "vla_debug", "--gpus", "4", "--json")
    assert code == 0, out
    numbers = json.loads(out)
    assert (numbers["params"], numbers["trainable"]) == (params, trainable)
    assert numbers["setup"]["strategy"] == "fsdp" and numbers["setup"]["micro_batch"] == 8
    assert numbers["fits"] and set(numbers["gb"]) >= {
        "weights",
        "gradients",
        "optimizer states",
        "activations",
    }
    assert {g["part"] for g in numbers["block_groups"]} == {"vision", "language"}
    subtotal = sum(numbers["bytes"].values())
    assert numbers["total_bytes"] == subtotal + CUDA_CONTEXT + round(FRAGMENTATION * subtotal)


def test_plan_says_what_does_not_fit_and_what_to_try():
    code, out = plan(FOUNDATION, "vla_debug", "--gpu-memory", "2", "-s", "data.batch_size=4096")
    assert code == 0, out
    assert "does not fit: needs" in out and "try:" in out
    assert "-s train.activation_checkpointing=true" in out and "-s train.grad_accum=" in out
    code, out = plan(FOUNDATION, "vla_debug", "--gpu-memory", "0.5")
    assert "does not fit" in out and "the CUDA context alone takes 1 GB" in out


def test_lora_and_frozen_parts_flow_in_from_requires_grad():
    _, full = plan(FOUNDATION, "vla_debug", "--json")
    _, lora = plan(FOUNDATION, "vla_debug", "--json", "-s", "model.vla.lora={}")
    _, frozen = plan(FOUNDATION, "vla_debug", "--json", "-s", "model.vla.freeze=true")
    full, lora, frozen = json.loads(full), json.loads(lora), json.loads(frozen)
    assert lora["trainable"] < full["trainable"] and frozen["trainable"] < lora["trainable"]
    assert lora["gb"]["optimizer states"] < full["gb"]["optimizer states"]
    assert frozen["params"] == full["params"]


def test_plan_of_laq_and_a_spec_error():
    code, out = plan(LAQ, "laq_debug", "--gpus", "2")
    assert code == 0, out
    assert "ddp over 2 ranks" in out and "a rough estimate for LAQ" in out
    code, out = plan(LAQ, "laq_debug", "--gpus", "3")
    assert code == 2 and "data.batch_size" in out  # 32 does not split over 3 ranks


def test_a_pretrained_vla_needs_its_config_file():
    code, out = plan(FOUNDATION, "vla_smolvlm", "-s", "shards=/nowhere")
    assert code == 2 and "model.vla.config_file" in out


def test_nothing_is_allocated():
    before = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    plan(FOUNDATION, "vla_debug", "--gpus", "2")
    assert (torch.cuda.memory_allocated() if torch.cuda.is_available() else 0) == before
    assert GB == 2**30


def test_plan_of_the_7b_specs():
    """Qwen2.5-VL-7B's architecture built on the meta device, four times: about 2 s."""
    code, out = plan(FOUNDATION, "vla_7b", "--gpus", "8", "--nodes", "2", "--json")
    assert code == 0, out
    numbers = json.loads(out)
    assert 8.2e9 < numbers["params"] < 8.4e9  # Qwen2.5-VL-7B with the latent head
    assert numbers["setup"]["strategy"] == "fsdp" and numbers["setup"]["ranks"] == 16
    assert numbers["blocks"] == 28 + 32 and numbers["fits"]

    code, out = plan(FOUNDATION, "vla_7b_lora", "--gpu-memory", "24", "--json")
    assert code == 0, out
    lora = json.loads(out)
    assert lora["trainable"] < 0.01 * lora["params"] and lora["dtypes"]["bfloat16"] > 8e9
    assert lora["fits"] and lora["setup"]["strategy"] == "none"

    code, out = plan(FOUNDATION, "vla_7b", "--gpus", "1")
    assert "does not fit" in out and "model.vla.lora" in out
