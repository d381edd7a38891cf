"""Shared fixtures: a tiny but real LAQ spec whose procedural shards are generated once per test session, and
a fake HuggingFace Hub on 127.0.0.1 that the real huggingface_hub client talks to."""

import os
import tempfile
from pathlib import Path

import pytest

from hlrp_lab.spec.check import check_spec
from tests.fake_hub import FakeHub

# Before anything imports huggingface_hub: its cache goes to a temporary folder, and no telemetry requests.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="hlrp-test-hf-home-")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


def tiny_spec_dict(cache_dir: Path) -> dict:
    return {
        "stage": "laq",
        "data": {
            "source": {
                "name": "procedural",
                "episodes": 12,
                "episode_length": 8,
                "num_objects": 2,
                "seed": 1,
            },
            "image_size": 32,
            "batch_size": 8,
            "num_workers": 0,
            "shuffle_buffer": 64,
            "val_split": 0.25,
            "val_pairs": 32,
            "cache_dir": str(cache_dir),
        },
        "model": {
            "encoder": {"name": "CNNEncoder", "channels": [16, 32]},
            "quantizer": {"name": "VectorQuantizer", "codebook_size": 4, "code_dim": 8, "num_tokens": 2},
            "decoder": {"name": "ViTDecoder", "patch_size": 8, "dim": 32, "depth": 1, "heads": 2},
        },
        "optim": {"name": "AdamW", "lr": 1e-3, "warmup_steps": 2},
        "train": {
            "max_step": 12,
            "log_frequency": 3,
            "eval_frequency": 6,
            "pictures": False,
        },  # their tests set it
        "meta": {"max_session": 1, "random_seed": 7},
    }


@pytest.fixture(scope="session")
def shard_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def tiny_spec(shard_cache) -> dict:
    """A valid LAQ spec that trains in about a second on CPU."""
    return check_spec(tiny_spec_dict(shard_cache))


@pytest.fixture
def fake_hub(monkeypatch) -> FakeHub:
    """A fresh fake Hub; HF_ENDPOINT, HF_TOKEN and HF_REPO point the lab at it."""
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_TestTokenValue0123456789")
        monkeypatch.setenv("HF_REPO", "lab/results")
        yield hub


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models: a second thread only adds waits, which stall on a busy
    machine. Modules ask for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
