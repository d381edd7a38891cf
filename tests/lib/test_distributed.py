"""The lab's collectives on a real two-rank gloo process group on the CPU, and NSVQ on two ranks against one
process: every rank joins through a file store in the test's folder, writes what it saw to a file, and the test
compares that with what one process computes.

``run_ranks`` is shared with other modules' multi-rank tests (tests/experiment/test_sharded_checkpoint.py).
"""

import os
from collections.abc import Callable
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from hlrp_lab.components.quantizer.config import NSVQConfig
from hlrp_lab.components.quantizer.nsvq import NSVQ
from hlrp_lab.lib.distributed import (
    barrier,
    broadcast_from_main,
    first_over_ranks,
    gather_rows,
    mean_over_ranks,
    rank_slice_randn,
    sum_over_ranks,
)
from hlrp_lab.lib.world import World

SIZE = 2
ONE = asdict(World())


# --- a gloo group of spawned processes -----------------------------------------------------------------------


def run_ranks(worker: Callable[..., None], directory: Path, *args, size: int = SIZE) -> None:
    """``worker(rank, directory, *args)`` on ``size`` spawned processes joined in a gloo group, as torchrun
    would launch them (RANK, WORLD_SIZE, ... set); raises what a rank raised. ``worker`` must be a module-level
    function (spawn pickles it by name)."""
    store = directory / "pg_store"
    assert not store.exists()
    torch.multiprocessing.spawn(join_group, args=(worker, size, str(directory), args), nprocs=size, join=True)


def join_group(rank: int, worker: Callable[..., None], size: int, directory: str, args: tuple) -> None:
    torch.set_num_threads(1)
    env = {"RANK": rank, "WORLD_SIZE": size, "LOCAL_RANK": rank, "LOCAL_WORLD_SIZE": size}
    os.environ.update({key: str(value) for key, value in env.items()})
    dist.init_process_group(
        "gloo",
        init_method=f"file://{directory}/pg_store",
        rank=rank,
        world_size=size,
        timeout=timedelta(seconds=60),
    )
    try:
        worker(rank, Path(directory), *args)
        dist.barrier()  # every rank done before any tears the group down
    finally:
        dist.destroy_process_group()


def results(directory: Path, name: str, size: int = SIZE) -> list[dict]:
    """What each rank saved as ``{name}{rank}.pt``."""
    return [torch.load(directory / f"{name}{rank}.pt", weights_only=False) for rank in range(size)]


# --- the lab's collectives -----------------------------------------------------------------------------------

NOISE_SEED, NOISE_SHAPE = 5, (3, 2, 4)  # each rank's rows of noise


def collectives(rank: int, directory: Path) -> None:
    seen: dict = {"world": asdict(World.current()), "launched": asdict(World.launched())}
    torch.manual_seed(NOISE_SEED)
    seen["noise"] = rank_slice_randn(torch.empty(NOISE_SHAPE, dtype=torch.float64))
    seen["after_noise"] = torch.rand(3)  # the generator moved as far as on every other rank
    # each rank lists its values in its own order; 1e10 + odd needs float64 to average exactly
    values = (
        {"loss": 1.0, "acc": torch.tensor(10.0), "big": 1e10 + 1, "flag": torch.tensor([True])}
        if rank == 0
        else {"big": 1e10 + 3, "flag": torch.tensor([False]), "acc": torch.tensor(30.0), "loss": 3}
    )
    seen["mean"] = mean_over_ranks(values)
    seen["mean_empty"] = mean_over_ranks({})
    seen["first"] = first_over_ranks([7, 3][rank])
    seen["first_set"] = first_over_ranks([-1, 9][rank])
    seen["first_none"] = first_over_ranks(-1)
    seen["broadcast"] = broadcast_from_main(
        {"run_dir": "data/x_1", "sessions": [1, 2]} if rank == 0 else None
    )
    seen["gathered"] = gather_rows(torch.full((2, 3), float(rank)))
    total = torch.tensor([1.0, float(rank)])
    seen["summed_in_place"] = sum_over_ranks(total) is total
    seen["summed"] = total
    barrier()
    torch.save(seen, directory / f"collectives{rank}.pt")


def test_world_inside_the_group_is_the_launched_one(two_ranks):
    for rank, seen in enumerate(two_ranks):
        expected = {"rank": rank, "size": 2, "local_rank": rank, "local_size": 2}
        assert seen["world"] == expected and seen["launched"] == expected


def test_world_outside_a_group_is_one_process_even_when_launched(monkeypatch):
    for key, value in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    launched = World.launched()
    assert asdict(launched) == {"rank": 3, "size": 4, "local_rank": 1, "local_size": 2}
    assert launched.distributed and not launched.main
    assert not dist.is_initialized() and World.current() == World()
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key)
    assert World.launched() == World() and World().main and not World().distributed


def test_rank_slices_of_noise_are_the_rows_of_one_process_noise(two_ranks):
    torch.manual_seed(NOISE_SEED)
    rows, *rest = NOISE_SHAPE
    whole = torch.randn((SIZE * rows, *rest), dtype=torch.float64)
    after = torch.rand(3)
    parts = [seen["noise"] for seen in two_ranks]
    assert all(part.shape == NOISE_SHAPE and part.dtype == torch.float64 for part in parts)
    assert torch.equal(torch.cat(parts), whole)
    assert not torch.equal(parts[0], parts[1])
    assert all(torch.equal(seen["after_noise"], after) for seen in two_ranks)


def test_rank_slice_randn_in_one_process_is_randn_like():
    like = torch.empty(6, 2, 4, dtype=torch.float64)
    torch.manual_seed(NOISE_SEED)
    expected = torch.randn(6, 2, 4, dtype=torch.float64)
    torch.manual_seed(NOISE_SEED)
    assert torch.equal(rank_slice_randn(like), expected)


def test_mean_over_ranks_averages_in_float64_and_keeps_each_rank_s_key_order(two_ranks):
    means = [seen["mean"] for seen in two_ranks]
    expected = {"loss": 2.0, "acc": 20.0, "big": 1e10 + 2, "flag": 0.5}
    assert list(means[0]) == ["loss", "acc", "big", "flag"]
    assert list(means[1]) == ["big", "flag", "acc", "loss"]
    assert all(mean == expected for mean in means)
    assert all(type(value) is float for mean in means for value in mean.values())
    assert all(seen["mean_empty"] == {} for seen in two_ranks)


def test_mean_over_ranks_in_one_process_gives_the_values_as_floats():
    assert mean_over_ranks({"b": torch.tensor(2.5), "a": 3}) == {"b": 2.5, "a": 3.0}
    assert list(mean_over_ranks({"b": 1, "a": 2})) == ["b", "a"]


def test_max_broadcast_gather_and_sum_over_ranks(two_ranks):
    for seen in two_ranks:
        assert seen["first"] == 3 and seen["first_set"] == 9 and seen["first_none"] == -1
        assert seen["broadcast"] == {"run_dir": "data/x_1", "sessions": [1, 2]}
        assert torch.equal(seen["gathered"], torch.tensor([[0.0] * 3] * 2 + [[1.0] * 3] * 2))
        assert seen["summed_in_place"] and torch.equal(seen["summed"], torch.tensor([2.0, 1.0]))


def test_one_process_collectives_are_the_identity():
    value = {"a": 1}
    assert broadcast_from_main(value) is value and first_over_ranks(4) == 4
    rows = torch.arange(6.0).view(3, 2)
    assert gather_rows(rows) is rows and sum_over_ranks(rows) is rows
    assert torch.equal(rows, torch.arange(6.0).view(3, 2))
    barrier()


# --- NSVQ: two ranks train as one process on the same global batch --------------------------------------------

ROWS, TOKENS, DIM, CODES = 4, 2, 8, 4  # global batch of 4: rows 0-1 on rank 0, rows 2-3 on rank 1
NSVQ_STEPS = 3


def nsvq() -> NSVQ:
    """NSVQ restarting dead codes every step; codes 0 and 1 point at the two ranks' data, codes 2 and 3 far
    from everything (dead)."""
    torch.manual_seed(0)
    quantizer = NSVQ(NSVQConfig(codebook_size=CODES, code_dim=DIM, num_tokens=TOKENS, replace_every=1))
    direction = torch.ones(DIM) / DIM**0.5
    far = torch.zeros(DIM)
    far[0] = 50.0
    with torch.no_grad():
        quantizer.codebook.copy_(torch.stack([direction, -direction, far, -far]))
    return quantizer.train()


def global_batch(step: int) -> torch.Tensor:
    """Step ``step``'s encoder outputs (ROWS, TOKENS, DIM): rank 0's rows near code 0, rank 1's near code 1, so
    that each of these codes is used on one rank only."""
    generator = torch.Generator().manual_seed(100 + step)
    sign = torch.tensor([1.0, 1.0, -1.0, -1.0]).view(ROWS, 1, 1)
    return sign * 0.3 + 0.05 * torch.randn(ROWS, TOKENS, DIM, generator=generator)


def nsvq_steps(rows: slice) -> list[dict]:
    """Training steps of NSVQ on ``rows`` of each global batch, from the same seed: what it outputs and holds."""
    quantizer = nsvq()
    torch.manual_seed(2)
    steps = []
    for step in range(NSVQ_STEPS):
        z = global_batch(step)[rows].requires_grad_()
        out = quantizer(z)
        steps.append(
            {
                "latent": out.quantized.detach().clone(),
                "indices": out.indices.clone(),
                "codebook": quantizer.codebook.detach().clone(),
                "steps": int(quantizer.steps),
            }
        )
    return steps


def nsvq_on_ranks(rank: int, directory: Path) -> None:
    half = ROWS // SIZE
    torch.save(nsvq_steps(slice(rank * half, (rank + 1) * half)), directory / f"nsvq{rank}.pt")


# --- one group for the whole module (starting one costs seconds: each rank imports torch) -------------------


def module_checks(rank: int, directory: Path) -> None:
    collectives(rank, directory)
    nsvq_on_ranks(rank, directory)


@pytest.fixture(scope="module")
def ranks_folder(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("ranks")
    run_ranks(module_checks, directory)
    return directory


@pytest.fixture(scope="module")
def two_ranks(ranks_folder) -> list[dict]:
    return results(ranks_folder, "collectives")


@pytest.fixture(scope="module")
def nsvq_ranks(ranks_folder) -> list[list[dict]]:
    return results(ranks_folder, "nsvq")


def test_nsvq_on_two_ranks_outputs_the_one_process_rows(nsvq_ranks):
    one = nsvq_steps(slice(None))
    assert one[0]["indices"].tolist() == [[0, 0], [0, 0], [1, 1], [1, 1]]  # each rank's rows on its own code
    for step, expected in enumerate(one):
        for rank, steps in enumerate(nsvq_ranks):
            rows = slice(rank * 2, rank * 2 + 2)
            assert torch.equal(steps[step]["indices"], expected["indices"][rows]), (step, rank)
            assert torch.equal(steps[step]["latent"], expected["latent"][rows]), (step, rank)
    # the noise is real: the training latent is neither the input nor its code
    z = global_batch(0)
    assert not torch.allclose(one[0]["latent"], z) and not torch.allclose(
        one[0]["latent"], nsvq().codebook[one[0]["indices"]]
    )


def test_nsvq_restarts_give_every_rank_the_one_process_codebook(nsvq_ranks):
    """Codes 2 and 3 are dead on both ranks together (codes 0 and 1 are each used on one rank only): both ranks
    replace exactly those, with the same picks of the gathered encoder outputs as one process."""
    one = nsvq_steps(slice(None))
    start = nsvq().codebook.detach()
    first = one[0]["codebook"]
    assert torch.equal(first[:2], start[:2])  # used on one rank only: alive, kept
    candidates = global_batch(0).flatten(0, 1)
    for code in (2, 3):  # restarted from encoder outputs of the global batch
        assert not torch.equal(first[code], start[code])
        assert any(torch.equal(first[code], row) for row in candidates), code
    for step in range(NSVQ_STEPS):
        assert all(steps[step]["steps"] == step + 1 for steps in nsvq_ranks)
        for steps in nsvq_ranks:
            assert torch.equal(steps[step]["codebook"], one[step]["codebook"]), step
