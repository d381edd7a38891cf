"""The LAQ components, built through their registries: shapes, quantizer behaviour, spec errors, learning."""

import math

import pytest
import torch
from torch.nn import functional as F

from hlrp_lab.components.decoder import DECODERS
from hlrp_lab.components.encoder import ENCODERS
from hlrp_lab.components.quantizer import QUANTIZERS
from hlrp_lab.lib.errors import SpecError

SIZE, CHANNELS, TOKENS, LATENT = 32, 3, 4, 16
SMALL_ENCODERS = {"ViTEncoder": {"dim": 32, "heads": 2}, "CNNEncoder": {"channels": [8, 16]}}
SMALL_DECODERS = {"ViTDecoder": {"dim": 32, "heads": 2}}


def frames(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(batch, CHANNELS, SIZE, SIZE, generator=generator) for _ in range(2))


def encoder(name: str, **params) -> torch.nn.Module:
    block = {"name": name, **SMALL_ENCODERS.get(name, {}), **params}
    return ENCODERS.build(
        block, "model.encoder", image_size=SIZE, channels=CHANNELS, num_tokens=TOKENS, out_dim=LATENT
    )


def decoder(name: str, **params) -> torch.nn.Module:
    block = {"name": name, **SMALL_DECODERS.get(name, {}), **params}
    return DECODERS.build(
        block, "model.decoder", image_size=SIZE, channels=CHANNELS, latent_dim=LATENT, num_tokens=TOKENS
    )


def vector_quantizer(**params) -> torch.nn.Module:
    return QUANTIZERS.build({"name": "VectorQuantizer", **params}, "model.quantizer")


@pytest.mark.parametrize("name", ENCODERS.names())
def test_encoder_shape(name):
    assert encoder(name)(*frames()).shape == (2, TOKENS, LATENT)


@pytest.mark.parametrize("name", DECODERS.names())
def test_decoder_shape(name):
    frame_t, _ = frames()
    out = decoder(name, predict_residual=False)(frame_t, torch.randn(2, TOKENS, LATENT))
    assert out.shape == frame_t.shape
    assert 0 <= out.min() and out.max() <= 1


def test_untrained_residual_decoder_copies_frame_t():
    frame_t, _ = frames()
    assert torch.equal(decoder("ViTDecoder")(frame_t, torch.randn(2, TOKENS, LATENT)), frame_t)


@pytest.mark.parametrize("name", QUANTIZERS.names())
def test_quantizer_contract(name):
    quantizer = QUANTIZERS.build({"name": name}, "model.quantizer").train()
    out = quantizer(torch.randn(3, quantizer.num_tokens, quantizer.dim))
    assert out.quantized.shape == (3, quantizer.num_tokens, quantizer.dim)
    assert out.loss.shape == ()
    if quantizer.codebook_size is None:
        assert out.indices is None
    else:
        assert out.indices.shape == (3, quantizer.num_tokens) and out.indices.dtype == torch.int64
        assert 0 <= out.indices.min() and out.indices.max() < quantizer.codebook_size


@pytest.mark.parametrize(
    "block", [{"name": name} for name in QUANTIZERS.names()] + [{"name": "FSQ", "levels": [2, 3]}]
)
def test_codes_to_latent_gives_the_latent_of_those_codes(block):
    """The latent of chosen codes is what the quantizer returns for inputs with those codes, and every code has
    its own latent (the decoded latent-action atlas draws each)."""
    quantizer = QUANTIZERS.build(block, "model.quantizer").eval()
    if quantizer.codebook_size is None:
        assert not hasattr(quantizer, "codes_to_latent")
        return
    out = quantizer(3 * torch.randn(5, quantizer.num_tokens, quantizer.dim))
    latent = quantizer.codes_to_latent(out.indices)
    assert latent.shape == out.quantized.shape
    torch.testing.assert_close(latent, out.quantized)
    every = torch.arange(quantizer.codebook_size).view(-1, 1).expand(-1, quantizer.num_tokens)
    latents = quantizer.codes_to_latent(every)
    assert latents.shape == (quantizer.codebook_size, quantizer.num_tokens, quantizer.dim)
    assert len(latents[:, 0].unique(dim=0)) == quantizer.codebook_size


@pytest.mark.parametrize("name", QUANTIZERS.names())
def test_gradients_reach_the_encoder_through_each_quantizer(name):
    quantizer = QUANTIZERS.build({"name": name}, "model.quantizer").train()
    kwargs = {"image_size": SIZE, "channels": CHANNELS, "num_tokens": quantizer.num_tokens}
    enc = ENCODERS.build({"name": "ViTEncoder", "dim": 32}, "model.encoder", out_dim=quantizer.dim, **kwargs)
    dec = DECODERS.build(
        {"name": "ViTDecoder", "dim": 32, "predict_residual": False},
        "model.decoder",
        latent_dim=quantizer.dim,
        **kwargs,
    )
    frame_t, frame_tk = frames()
    out = quantizer(enc(frame_t, frame_tk))
    (F.mse_loss(dec(frame_t, out.quantized), frame_tk) + out.loss).backward()
    assert enc.patch_embed.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("family", "name", "wiring"),
    [(ENCODERS, name, {"num_tokens": TOKENS, "out_dim": LATENT}) for name in ENCODERS.names()]
    + [(DECODERS, name, {"latent_dim": LATENT, "num_tokens": TOKENS}) for name in DECODERS.names()]
    + [(QUANTIZERS, name, {}) for name in QUANTIZERS.names()],
)
def test_builds_on_the_meta_device(family, name, wiring):
    """The spec check dry-builds models on the meta device."""
    if family is not QUANTIZERS:
        wiring = {**wiring, "image_size": 64, "channels": CHANNELS}
    with torch.device("meta"):
        module = family.build({"name": name}, "model.x", **wiring)
    assert isinstance(module, family.get(name, "model.x.name"))
    parameters = list(module.parameters())
    assert all(p.is_meta for p in parameters)  # no weight allocated: the dry build costs no memory
    if family is not QUANTIZERS:
        assert parameters  # encoders and decoders have weights (some quantizers have none)


def test_vector_quantizer_indices_and_commitment_loss():
    quantizer = vector_quantizer(codebook_size=8, code_dim=16).train()
    out = quantizer(torch.randn(4, 4, 16))
    assert 0 <= out.indices.min() and out.indices.max() < 8
    assert out.loss.item() > 0
    assert quantizer.eval()(torch.randn(4, 4, 16)).loss.item() == 0


def test_vector_quantizer_ema_moves_the_codebook_in_training_only():
    quantizer = vector_quantizer(code_dim=8, dead_code_threshold=0)
    x = torch.randn(8, 4, 8)
    before = quantizer.vq.codebook.clone()
    quantizer.eval()(x)
    assert torch.equal(quantizer.vq.codebook, before)
    quantizer.train()(x)
    assert not torch.allclose(quantizer.vq.codebook, before)


def feed_one_cluster(threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit a codebook to spread data, then feed data near code 0 only: (code 0, codebook before, after)."""
    torch.manual_seed(0)
    quantizer = vector_quantizer(code_dim=4, decay=0.8, dead_code_threshold=threshold).train()
    quantizer(torch.randn(16, 4, 4))
    before = quantizer.vq.codebook.clone()
    for _ in range(10):
        assert (quantizer(before[0] + 0.01 * torch.randn(16, 4, 4)).indices == 0).any()
    return before[0], before, quantizer.vq.codebook


def test_dead_code_restart_moves_unused_codes_to_the_data():
    target, before, after = feed_one_cluster(threshold=2.0)
    assert (before[1:] - target).norm(dim=-1).min() > 0.5  # the other codes start far from the data
    assert (after[1:] - target).norm(dim=-1).max() < 0.1  # and are re-initialised from the batch


def test_without_dead_code_restart_unused_codes_stay():
    _, before, after = feed_one_cluster(threshold=0.0)
    torch.testing.assert_close(after[1:], before[1:], atol=1e-3, rtol=0)


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [2, 3]])
def test_fsq_codebook(levels):
    quantizer = QUANTIZERS.build({"name": "FSQ", "levels": levels, "num_tokens": 2}, "model.quantizer")
    assert quantizer.dim == len(levels) and quantizer.codebook_size == math.prod(levels)
    out = quantizer(3 * torch.randn(64, 2, len(levels)))
    assert 0 <= out.indices.min() and out.indices.max() < quantizer.codebook_size
    assert out.loss.item() == 0


def test_identity_passes_through():
    quantizer = QUANTIZERS.build({"name": "Identity", "dim": 8, "num_tokens": 3}, "model.quantizer")
    x = torch.randn(2, 3, 8)
    out = quantizer(x)
    assert out.quantized is x and out.indices is None and out.loss.item() == 0
    assert quantizer.codebook_size is None


def test_unknown_name_lists_registered_names():
    with pytest.raises(SpecError, match="model.encoder.name: unknown encoder 'VitEncoder'") as err:
        encoder("VitEncoder")
    assert str(err.value).endswith(f"; registered: {', '.join(ENCODERS.names())}")


def test_unknown_key_names_its_path():
    with pytest.raises(SpecError, match=r"model\.encoder\.dimm: unknown key"):
        encoder("ViTEncoder", dimm=64)


def test_wrong_type_names_its_path():
    with pytest.raises(SpecError, match=r"model\.encoder\.depth: .*'two'"):
        encoder("ViTEncoder", depth="two")


@pytest.mark.parametrize(
    ("block", "path"),
    [
        ({"name": "VectorQuantizer", "codebook_size": 0}, "model.quantizer.codebook_size"),
        ({"name": "VectorQuantizer", "decay": 1.0}, "model.quantizer.decay"),
        ({"name": "FSQ", "levels": [8, 1]}, "model.quantizer.levels.1"),
    ],
)
def test_out_of_range_values_name_their_path(block, path):
    with pytest.raises(SpecError, match=path.replace(".", r"\.")):
        QUANTIZERS.build(block, "model.quantizer")


def test_dim_not_divisible_by_heads_is_a_spec_error():
    with pytest.raises(SpecError, match=r"model\.encoder: .*dim \(30\) must be divisible by heads \(4\)"):
        encoder("ViTEncoder", dim=30, heads=4)


@pytest.mark.parametrize("build", [encoder, decoder])
def test_patch_size_must_divide_image_size(build):
    name = "ViTEncoder" if build is encoder else "ViTDecoder"
    with pytest.raises(ValueError, match="patch_size 5 must divide image_size 32"):
        build(name, patch_size=5)


def test_cnn_encoder_rejects_too_many_stages():
    with pytest.raises(ValueError, match="too small"):
        encoder("CNNEncoder", channels=[4] * 6)


def moved_square_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Two transitions on a grey background: a square moves right in one, down in the other."""
    frame_t = torch.full((2, CHANNELS, SIZE, SIZE), 0.2)
    frame_tk = frame_t.clone()
    frame_t[:, 0, 8:16, 8:16] = 1.0
    frame_tk[0, 0, 8:16, 12:20] = 1.0
    frame_tk[1, 0, 12:20, 8:16] = 1.0
    return frame_t, frame_tk


def test_vq_laq_overfits_two_transitions():
    torch.manual_seed(0)
    quantizer = vector_quantizer(codebook_size=8, code_dim=16, num_tokens=TOKENS)
    enc, dec = encoder("ViTEncoder", dim=64), decoder("ViTDecoder", dim=64)
    modules = torch.nn.ModuleList([enc, quantizer, dec]).train()
    optimizer = torch.optim.Adam(modules.parameters(), lr=1e-3)
    frame_t, frame_tk = moved_square_pairs()
    for _ in range(150):
        out = quantizer(enc(frame_t, frame_tk))
        loss = F.mse_loss(dec(frame_t, out.quantized), frame_tk) + out.loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    modules.eval()
    with torch.no_grad():
        mse = F.mse_loss(dec(frame_t, quantizer(enc(frame_t, frame_tk)).quantized), frame_tk).item()
    copy_mse = F.mse_loss(frame_t, frame_tk).item()
    assert mse < 0.75 * copy_mse  # about 0.45 when trained
