"""``train.distributed`` and the launch checks, without torch: the strategy fits the stage and the number of
ranks, the global batch splits over them, and one-process modes refuse a distributed launch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hlrp_lab.lib.errors import SpecError
from hlrp_lab.spec.check import check_spec
from hlrp_lab.spec.spec_util import check_launch, resolve_spec

SPECS = Path(__file__).parents[2] / "specs"
DEFAULTS = {"strategy": "auto", "cpu_offload": False, "find_unused_parameters": False, "timeout_s": 1800}
# Specs of each stage that need no ${var}: LAQ, and the VLA stages (their `latest:` runs are only strings here).
NO_VARS = [("laq.json", "laq_debug"), ("foundation.json", "vla_debug"), ("finetune.json", "ft_debug")]
VLA = NO_VARS[1:]


def spec(file: str, name: str, distributed: dict | None = None, **sets) -> dict:
    """The spec ``name`` of ``file`` with ``-s`` values, and a whole ``train.distributed`` block when given."""
    resolved = resolve_spec(SPECS / file, name, sets)
    if distributed is not None:
        resolved["train"]["distributed"] = distributed
    return resolved


@pytest.mark.parametrize(("file", "name"), NO_VARS)
def test_a_checked_spec_holds_the_distributed_defaults(file, name):
    checked = check_spec(spec(file, name), ranks=1)
    assert checked["train"]["distributed"] == DEFAULTS
    assert checked["train"]["activation_checkpointing"] is False
    assert check_spec(spec(file, name), ranks=2)["train"]["distributed"] == DEFAULTS  # batch 32 splits


def test_given_distributed_options_are_kept():
    given = {"strategy": "ddp", "find_unused_parameters": True, "timeout_s": 60}
    checked = check_spec(
        spec("laq.json", "laq_debug", given, **{"train.activation_checkpointing": True}), ranks=4
    )
    assert checked["train"]["distributed"] == {
        **DEFAULTS,
        "strategy": "ddp",
        "find_unused_parameters": True,
        "timeout_s": 60,
    }
    assert checked["train"]["activation_checkpointing"] is True


@pytest.mark.parametrize("ranks", [1, 2])
def test_fsdp_is_refused_for_laq_naming_the_key(ranks):
    laq = spec("laq.json", "laq_debug", {"strategy": "fsdp"})
    with pytest.raises(
        SpecError, match=r"^train\.distributed\.strategy: fsdp .*stage 'laq' .*use ddp \(or auto\)$"
    ):
        check_spec(laq, ranks=ranks)


@pytest.mark.parametrize(("file", "name"), VLA)
def test_fsdp_is_accepted_for_the_vla_stages(file, name):
    for strategy in ("fsdp", "ddp", "auto"):
        checked = check_spec(spec(file, name, {"strategy": strategy}), ranks=2)
        assert checked["train"]["distributed"]["strategy"] == strategy


@pytest.mark.parametrize(("file", "name"), NO_VARS)
def test_strategy_none_is_refused_on_several_ranks(file, name):
    one_process = spec(file, name, {"strategy": "none"})
    assert check_spec(one_process, ranks=1)["train"]["distributed"]["strategy"] == "none"
    with pytest.raises(SpecError, match=r"^train\.distributed\.strategy: none .* but 2 ranks were launched"):
        check_spec(spec(file, name, {"strategy": "none"}), ranks=2)


@pytest.mark.parametrize(("file", "name"), NO_VARS)
def test_a_batch_that_does_not_split_over_the_ranks_names_the_key_and_a_fix(file, name):
    odd = spec(file, name, **{"data.batch_size": 30})
    assert check_spec(odd, ranks=2)["data"]["batch_size"] == 30
    with pytest.raises(SpecError) as err:
        check_spec(spec(file, name, **{"data.batch_size": 30}), ranks=4)
    assert str(err.value) == (
        "data.batch_size: 30 does not split over 4 rank(s) x train.grad_accum 1; "
        "use a multiple of 4, e.g. -s data.batch_size=28"
    )
    fixed = spec(file, name, **{"data.batch_size": 28})
    assert check_spec(fixed, ranks=4)["data"]["batch_size"] == 28  # the advice passes


def test_grad_accum_counts_in_the_split():
    accum = {"train.grad_accum": 4}
    assert check_spec(spec("laq.json", "laq_debug", **accum), ranks=2)["train"]["grad_accum"] == 4
    with pytest.raises(SpecError, match=r"32 does not split over 3 rank\(s\) x train\.grad_accum 4; .*=24$"):
        check_spec(spec("laq.json", "laq_debug", **accum), ranks=3)


def test_ranks_default_to_the_launched_world_size(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SpecError, match="but 2 ranks were launched"):
        check_spec(spec("laq.json", "laq_debug", {"strategy": "none"}))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert check_spec(spec("laq.json", "laq_debug", {"strategy": "none"}))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strategy": "zero3"}, r"train\.distributed\.strategy"),
        ({"timeout_s": 0}, r"train\.distributed\.timeout_s"),
        ({"backend": "nccl"}, r"train\.distributed\.backend"),
        ({"cpu_offload": [1]}, r"train\.distributed\.cpu_offload"),
    ],
)
def test_bad_distributed_keys_are_spec_errors_naming_them(change, message):
    with pytest.raises(SpecError, match=message):
        check_spec(spec("laq.json", "laq_debug", change), ranks=1)


@pytest.mark.parametrize("mode", ["eval", "search"])
def test_one_process_modes_refuse_a_distributed_launch(mode):
    with pytest.raises(SpecError, match=rf"^{mode} runs in one process \(.*\), not on 2 ranks; .*torchrun$"):
        check_launch(mode, 2)
    check_launch(mode, 1)


@pytest.mark.parametrize("mode", ["train", "dev"])
def test_training_modes_accept_a_distributed_launch(mode):
    check_launch(mode, 1)
    check_launch(mode, 8)


def test_the_distributed_checks_need_no_torch(tmp_path):
    """``spec check`` runs them in a process that never imports torch."""
    script = f"""
import json, sys
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.spec.check import check_spec
from hlrp_lab.spec.spec_util import resolve_spec
errors = []
for block, batch, ranks in [({{"strategy": "fsdp"}}, 32, 1), ({{}}, 30, 4)]:
    spec = resolve_spec({str(SPECS / "laq.json")!r}, "laq_debug", {{"data.batch_size": batch}})
    spec["train"]["distributed"] = block
    try:
        check_spec(spec, ranks=ranks)
    except SpecError as err:
        errors.append(str(err).split(":")[0])
print(json.dumps({{"errors": errors, "torch": "torch" in sys.modules}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == {
        "errors": ["train.distributed.strategy", "data.batch_size"],
        "torch": False,
    }


def test_cpu_offload_is_for_fsdp_on_a_gpu():
    offload = {"strategy": "ddp", "cpu_offload": True}
    with pytest.raises(
        SpecError, match=r"^train\.distributed\.cpu_offload: offloads FSDP's shards; .* ddp does not"
    ):
        check_spec(spec("foundation.json", "vla_debug", offload), ranks=2)
    with pytest.raises(
        SpecError, match=r"^train\.distributed\.cpu_offload: .* for stage 'laq' does not shard"
    ):
        check_spec(spec("laq.json", "laq_debug", {"cpu_offload": True}), ranks=2)
    on_cpu = spec("foundation.json", "vla_debug", {"cpu_offload": True}, **{"train.device": "cpu"})
    with pytest.raises(SpecError, match=r"^train\.distributed\.cpu_offload: .*train\.device is cpu"):
        check_spec(on_cpu, ranks=2)
    auto = check_spec(spec("foundation.json", "vla_debug", {"cpu_offload": True}), ranks=2)
    assert auto["train"]["distributed"]["cpu_offload"] is True
