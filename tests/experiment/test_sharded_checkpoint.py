"""Sharded `last` checkpoints (torch.distributed.checkpoint) in one process and across world sizes on a real
gloo group, consolidated `best` weights with tied tensors, activation checkpointing of transformer blocks, and
the strategy a spec resolves to."""

import copy
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, load_model
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
)

from hlrp_lab.experiment.checkpoint import Checkpoints, ShardedLast, read_state, unshared
from hlrp_lab.experiment.distributed import (
    block_classes,
    checkpoint_blocks,
    full_weights,
    outermost_blocks,
    shard,
    strategy_of,
)
from hlrp_lab.lib.errors import CheckpointError, RunError
from hlrp_lab.lib.util import temp_path
from hlrp_lab.lib.world import World
from tests.lib.test_distributed import SIZE, run_ranks

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning"),  # DCP in one process
]

PREFIX = "tiny_t0_s0"
WIDTH, SEQ = 8, 3
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def block_model(seed: int = 0) -> nn.Sequential:
    """Linear, two transformer blocks (no dropout), Linear: (B, SEQ, 4) -> (B, SEQ, 2)."""
    torch.manual_seed(seed)
    layer = {"d_model": WIDTH, "nhead": 2, "dim_feedforward": 16, "dropout": 0.0, "batch_first": True}
    return nn.Sequential(
        nn.Linear(4, WIDTH),
        nn.TransformerEncoderLayer(**layer),
        nn.TransformerEncoderLayer(**layer),
        nn.Linear(WIDTH, 2),
    )


def inputs(rows: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(rows, SEQ, 4, generator=torch.Generator().manual_seed(seed))


def optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> torch.Tensor:
    loss = model(x).pow(2).mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss.detach()


def trained(seed: int = 0, steps: int = 2) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = block_model(seed)
    opt = optimizer(model)
    for step in range(steps):
        train_step(model, opt, inputs(seed=10 + step))
    return model, opt


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def same_optimizer_state(a: dict, b: dict) -> bool:
    """Two ``get_optimizer_state_dict`` results (keyed by parameter name) hold the same moments and steps."""
    if a["state"].keys() != b["state"].keys():
        return False
    for name, moments in a["state"].items():
        other = b["state"][name]
        if moments.keys() != other.keys():
            return False
        if not all(torch.equal(torch.as_tensor(moments[k]), torch.as_tensor(other[k])) for k in moments):
            return False
    return [g["lr"] for g in a["param_groups"]] == [g["lr"] for g in b["param_groups"]]


def sharded(directory: Path) -> ShardedLast:
    return ShardedLast(Checkpoints(directory, PREFIX))


def folders(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.dcp"))


# --- one process (no process group) -------------------------------------------------------------------------


def test_a_sharded_last_checkpoint_restores_model_and_optimizer(tmp_path):
    model, opt = trained()
    last = sharded(tmp_path)
    assert not last.written()
    last.save(model, opt, {"step": 2, "best": 0.5})
    assert last.written() and folders(tmp_path) == [f"{PREFIX}_last_step2.dcp"]
    assert (tmp_path / f"{PREFIX}_last_step2.dcp" / ".metadata").is_file()
    state = read_state(last.checkpoints.state_path("last"))
    assert state == {"step": 2, "best": 0.5, "shards": f"{PREFIX}_last_step2.dcp"}
    assert not last.checkpoints.weights_path("last").exists()  # no safetensors `last` beside the folder

    fresh = block_model(seed=5)
    fresh_opt = optimizer(fresh)
    assert not same_tensors(fresh.state_dict(), model.state_dict())
    assert last.load(fresh, fresh_opt) == state
    assert same_tensors(fresh.state_dict(), model.state_dict())
    assert same_optimizer_state(
        get_optimizer_state_dict(fresh, fresh_opt), get_optimizer_state_dict(model, opt)
    )
    # the restored run continues exactly as the original (AdamW's step count and moments included)
    x = inputs(seed=99)
    assert torch.equal(train_step(fresh, fresh_opt, x), train_step(model, opt, x))
    assert same_tensors(fresh.state_dict(), model.state_dict())


def test_a_new_save_replaces_the_older_folder(tmp_path):
    model, opt = trained()
    last = sharded(tmp_path)
    last.save(model, opt, {"step": 2})
    train_step(model, opt, inputs(seed=3))
    last.save(model, opt, {"step": 4})
    assert folders(tmp_path) == [f"{PREFIX}_last_step4.dcp"]
    assert read_state(last.checkpoints.state_path("last"))["shards"] == f"{PREFIX}_last_step4.dcp"
    fresh = block_model(seed=5)
    assert last.load(fresh, optimizer(fresh))["step"] == 4
    assert same_tensors(fresh.state_dict(), model.state_dict())


def killed_saves(directory: Path) -> ShardedLast:
    """A checkpoint at step 4, and what killed saves leave: the folder of step 6 without a state file naming it
    (killed before the commit), a stale folder of step 2, and a half-written state file."""
    model, opt = trained()
    last = sharded(directory)
    last.save(model, opt, {"step": 4})
    shutil.copytree(directory / f"{PREFIX}_last_step4.dcp", directory / f"{PREFIX}_last_step6.dcp")
    (directory / f"{PREFIX}_last_step2.dcp").mkdir()
    (directory / f"{PREFIX}_last_step2.dcp" / "__0_0.distcp").write_bytes(b"partial")
    temp_path(last.checkpoints.state_path("last")).write_bytes(b"half a state")
    return last


def test_recover_removes_the_folders_no_state_file_names(tmp_path):
    last = killed_saves(tmp_path)
    (tmp_path / "tiny_t0_s1_last_step6.dcp").mkdir()  # another session's folder: not this one's to remove
    last.recover()
    assert folders(tmp_path) == [f"{PREFIX}_last_step4.dcp", "tiny_t0_s1_last_step6.dcp"]
    assert not temp_path(last.checkpoints.state_path("last")).exists()
    fresh = block_model(seed=5)
    assert last.load(fresh, optimizer(fresh))["step"] == 4


def test_recover_without_a_state_file_removes_every_folder(tmp_path):
    last = killed_saves(tmp_path)
    last.checkpoints.state_path("last").unlink()  # the first save was killed before its commit
    last.recover()
    assert folders(tmp_path) == [] and not last.written()


def test_an_unreadable_state_file_keeps_every_folder(tmp_path):
    last = killed_saves(tmp_path)
    state_file = last.checkpoints.state_path("last")
    state_file.write_bytes(b"\x00garbage, not a torch file")
    last.recover()
    assert folders(tmp_path) == [f"{PREFIX}_last_step{s}.dcp" for s in (2, 4, 6)]
    assert state_file.is_file()
    fresh = block_model()
    with pytest.raises(CheckpointError, match=rf"checkpoint file {state_file} is corrupt"):
        last.load(fresh, optimizer(fresh))


@pytest.mark.parametrize("damage", ["missing", "incomplete"])
def test_loading_a_missing_or_incomplete_folder_names_it(tmp_path, damage):
    model, opt = trained()
    last = sharded(tmp_path)
    last.save(model, opt, {"step": 2})
    folder = tmp_path / f"{PREFIX}_last_step2.dcp"
    if damage == "missing":
        shutil.rmtree(folder)
    else:
        (folder / ".metadata").unlink()
    fresh = block_model(seed=5)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        last.load(fresh, optimizer(fresh))
    assert str(err.value).startswith(f"checkpoint folder {folder} is missing or incomplete; ")
    assert same_tensors(fresh.state_dict(), before)


@pytest.mark.parametrize("damage", ["another_model", "shard_missing"])
def test_a_folder_that_does_not_fit_the_model_is_a_checkpoint_error(tmp_path, damage):
    model, opt = trained()
    last = sharded(tmp_path)
    last.save(model, opt, {"step": 2})
    if damage == "shard_missing":
        (tmp_path / f"{PREFIX}_last_step2.dcp" / "__0_0.distcp").unlink()
    else:
        model = nn.Sequential(nn.Linear(4, WIDTH), nn.Linear(WIDTH, 3))
    with pytest.raises(CheckpointError, match=r"_last_step2\.dcp cannot be loaded into the spec's model"):
        last.load(model, optimizer(model))


def test_a_failed_sharded_save_is_a_run_error_keeping_the_last_checkpoint(tmp_path):
    model, opt = trained()
    last = sharded(tmp_path)
    last.save(model, opt, {"step": 2})
    (tmp_path / f"{PREFIX}_last_step4.dcp").write_text("in the way of the folder")  # as a full disk fails it
    with pytest.raises(RunError, match=r"could not write .*_last_step4\.dcp: .*free space and resume"):
        last.save(model, opt, {"step": 4})
    assert read_state(last.checkpoints.state_path("last"))["shards"] == f"{PREFIX}_last_step2.dcp"


def test_a_legacy_last_state_without_shards_is_a_checkpoint_error(tmp_path):
    checkpoints = Checkpoints(tmp_path, PREFIX)
    model, opt = trained()
    checkpoints.save("last", model, {"step": 2, "optimizer": opt.state_dict()})  # as before sharding
    fresh = block_model(seed=5)
    with pytest.raises(CheckpointError, match=r"written before sharded checkpoints; .*train again to resume"):
        ShardedLast(checkpoints).load(fresh, optimizer(fresh))


# --- `best` from a full state dict ----------------------------------------------------------------------------


class Tied(nn.Module):
    """An embedding and an output head sharing one weight (as language models tie them)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(6, 4)
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 6, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(self.embed(ids))))


def test_best_from_a_full_state_dict_with_tied_tensors_loads_into_a_tied_model(tmp_path):
    model = Tied(seed=0)
    state_dict = model.state_dict()
    assert state_dict["embed.weight"].data_ptr() == state_dict["head.weight"].data_ptr()
    checkpoints = Checkpoints(tmp_path, PREFIX)
    checkpoints.save("best", state_dict, {"step": 3})
    assert set(load_file(checkpoints.weights_path("best"))) == {"embed.weight", "body.weight", "body.bias"}
    fresh = Tied(seed=1)
    assert checkpoints.load("best", fresh) == {"step": 3}
    assert same_tensors(fresh.state_dict(), model.state_dict())
    assert fresh.head.weight is fresh.embed.weight  # still tied
    plain_load = Tied(seed=2)
    load_model(plain_load, str(checkpoints.weights_path("best")))  # as eval and the Hub's users load it
    assert same_tensors(plain_load.state_dict(), model.state_dict())


def test_unshared_keeps_each_storage_once_and_makes_views_contiguous():
    base = torch.arange(6.0).view(2, 3)
    other = torch.ones(2)
    kept = unshared({"a": base, "b": base, "t": other.view(2, 1).t(), "c": torch.arange(12.0).view(3, 4).t()})
    assert list(kept) == ["a", "t", "c"]
    assert kept["a"] is base and all(t.is_contiguous() for t in kept.values())
    assert torch.equal(kept["c"], torch.arange(12.0).view(3, 4).t())


# --- activation checkpointing ---------------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)


class HubLike(nn.Module):
    """A model that names its blocks as transformers models do (``_no_split_modules``)."""

    _no_split_modules = ("Block",)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(4, WIDTH)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.out = nn.Linear(WIDTH, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.out(x)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Layer(nn.Module):
    """A layer whose attention is what the model names (as SmolVLM's vision tower names its attention)."""

    def __init__(self):
        super().__init__()
        self.attention, self.mlp = Attention(), nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.attention(x))


class AttentionNamed(nn.Module):
    _no_split_modules = ("Attention",)

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Layer(), Layer()])


def test_block_classes_are_torch_layers_and_those_models_name():
    assert block_classes(block_model()) == (nn.TransformerEncoderLayer,)
    assert block_classes(HubLike()) == (Block,)
    outer = nn.Sequential(HubLike(), nn.Linear(1, 1))  # named by a submodule
    assert block_classes(outer) == (Block,)
    assert block_classes(nn.Linear(2, 2)) == ()
    # a named module inside a layer of a ModuleList: the layer is the block
    assert block_classes(AttentionNamed()) == (Layer,)


def counted(forward, calls: list):
    def forward_counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    return forward_counted


def loss_and_grads(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss and each parameter's gradient, named as in the state dict (no checkpoint wrapper names)."""
    model.zero_grad()
    loss = model(x).pow(2).mean()
    loss.backward()
    names = {id(p): n for n, p in model.named_parameters()}
    grads = {
        names[id(p)].replace("_checkpoint_wrapped_module.", ""): p.grad.clone() for p in model.parameters()
    }
    return loss.detach(), grads


@pytest.mark.parametrize("build", [block_model, HubLike], ids=["torch_layers", "no_split_modules"])
def test_activation_checkpointing_keeps_keys_loss_and_gradients(build):
    plain, wrapped = build(), build()
    checkpoint_blocks(wrapped)
    blocks = [m for m in wrapped.modules() if isinstance(m, CheckpointWrapper)]
    assert len(blocks) == 2 and outermost_blocks(wrapped) == blocks
    assert same_tensors(wrapped.state_dict(), plain.state_dict())  # same keys: checkpoints still load
    calls = []
    for block in blocks:
        inner = block._checkpoint_wrapped_module
        inner.forward = counted(inner.forward, calls)
    x = inputs()
    loss, grads = loss_and_grads(plain, x)
    wrapped_loss, wrapped_grads = loss_and_grads(wrapped, x)
    assert len(calls) == 4  # each block ran forward twice: once more in backward, recomputed
    assert torch.equal(wrapped_loss, loss)
    assert grads.keys() == wrapped_grads.keys() == plain.state_dict().keys()
    assert all(torch.allclose(wrapped_grads[k], grads[k], rtol=1e-6, atol=1e-7) for k in grads)
    again = build()
    again.load_state_dict(wrapped.state_dict())  # a checkpointed model's weights load into a plain one
    assert same_tensors(again.state_dict(), plain.state_dict())


# --- strategy -------------------------------------------------------------------------------------------------


def stage_spec(stage: str, strategy: str = "auto", freeze: bool = False) -> dict:
    spec = {"stage": stage, "train": {"distributed": {"strategy": strategy}}, "model": {}}
    if stage != "laq":
        spec["model"]["vla"] = {"name": "SmolVLM", "freeze": freeze}
    return spec


@pytest.mark.parametrize(
    ("stage", "freeze", "several"),
    [
        ("laq", False, "ddp"),
        ("foundation", False, "fsdp"),
        ("finetune", False, "fsdp"),
        ("finetune", True, "ddp"),
    ],
)
def test_auto_strategy_is_none_on_one_rank_and_the_stage_s_choice_on_several(stage, freeze, several):
    assert strategy_of(stage_spec(stage, freeze=freeze), World()) == "none"
    assert strategy_of(stage_spec(stage, freeze=freeze), World(rank=1, size=2)) == several
    for given in ("none", "ddp", "fsdp"):
        assert strategy_of(stage_spec(stage, given, freeze), World(size=4)) == given
        assert (
            strategy_of(stage_spec(stage, given, freeze), World()) == "none"
        )  # the spec runs on one process


# --- across world sizes: FSDP2 on two gloo ranks --------------------------------------------------------------

SHARD_TRAIN = {"precision": "fp32", "distributed": {"cpu_offload": False}}


def fsdp_ranks(rank: int, directory: Path) -> None:
    """Each rank: the block model (activation-checkpointed) sharded by the lab's ``shard``; load the one-process
    checkpoint of ``one/``, then train a step on this rank's half of the batch and save to ``two/``; the full
    weights and optimizer state after each, and a consolidated `best` of a tied model, as rank 0 sees them."""
    world = World.current()
    model = block_model(seed=7)
    checkpoint_blocks(model)
    shard(model, torch.device("cpu"), SHARD_TRAIN, world)
    opt = optimizer(model)
    state = sharded(directory / "one").load(model, opt)
    # copies: on the CPU the full state dicts share tensors with the live optimizer (its step counts)
    full = {"state": state, "loaded_model": copy.deepcopy(get_model_state_dict(model, options=FULL))}
    full["loaded_optim"] = copy.deepcopy(get_optimizer_state_dict(model, opt, options=FULL))
    half = inputs(rows=4, seed=42).chunk(SIZE)[rank]
    train_step(model, opt, half)
    sharded(directory / "two").save(model, opt, {"step": 3})
    full["saved_model"] = get_model_state_dict(model, options=FULL)
    full["saved_optim"] = copy.deepcopy(get_optimizer_state_dict(model, opt, options=FULL))
    full["local_shapes"] = {n: tuple(p.to_local().shape) for n, p in model.named_parameters()}

    tied = Tied(seed=3)
    shard(tied, torch.device("cpu"), SHARD_TRAIN, world)
    tied_full = full_weights(tied, tied)  # as the loop's save_best gathers it
    if world.main:
        Checkpoints(directory / "best", PREFIX).save("best", tied_full, {"step": 3})
        torch.save(full, directory / "full.pt")


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("fsdp")
    for name in ("one", "two", "best"):
        (directory / name).mkdir()
    model, opt = trained(seed=0)
    sharded(directory / "one").save(model, opt, {"step": 2, "history": [1.0]})
    run_ranks(fsdp_ranks, directory)
    return directory


@pytest.mark.slow  # two spawned ranks import torch.distributed's DTensor stack: ~10-20 s
def test_two_fsdp_ranks_load_a_one_process_checkpoint(two_rank_run):
    full = torch.load(two_rank_run / "full.pt", weights_only=False)
    model, opt = trained(seed=0)
    assert full["state"]["step"] == 2 and full["state"]["history"] == [1.0]
    assert same_tensors(full["loaded_model"], model.state_dict())
    assert same_optimizer_state(full["loaded_optim"], get_optimizer_state_dict(model, opt))
    # the parameters really were sharded: each rank held half the rows
    shapes = full["local_shapes"]
    assert shapes["0.weight"] == (WIDTH // SIZE, 4)
    assert any("_checkpoint_wrapped_module" in name for name in shapes)


@pytest.mark.slow  # two spawned ranks import torch.distributed's DTensor stack: ~10-20 s
def test_one_process_loads_what_two_fsdp_ranks_saved(two_rank_run):
    full = torch.load(two_rank_run / "full.pt", weights_only=False)
    last = sharded(two_rank_run / "two")
    assert folders(two_rank_run / "two") == [f"{PREFIX}_last_step3.dcp"]
    assert sorted(p.name for p in (two_rank_run / "two" / f"{PREFIX}_last_step3.dcp").glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    model = block_model(seed=5)  # plain: neither sharded nor checkpoint-wrapped
    opt = optimizer(model)
    assert last.load(model, opt)["shards"] == f"{PREFIX}_last_step3.dcp"
    assert same_tensors(model.state_dict(), full["saved_model"])
    assert not same_tensors(full["saved_model"], full["loaded_model"])  # the step changed the weights
    assert same_optimizer_state(get_optimizer_state_dict(model, opt), full["saved_optim"])


@pytest.mark.slow
def test_best_gathered_from_fsdp_ranks_loads_into_a_tied_model(two_rank_run):
    checkpoints = Checkpoints(two_rank_run / "best", PREFIX)
    model = Tied(seed=0)
    assert checkpoints.load("best", model) == {"step": 3}
    assert same_tensors(model.state_dict(), Tied(seed=3).state_dict())
    assert model.head.weight is model.embed.weight
