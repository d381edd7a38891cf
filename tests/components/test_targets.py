"""Decoder targets: pixels (the frame) and frozen DINOv2 features from a real transformers Dinov2Model built
small offline, or loaded with from_pretrained from a local directory; the decoder's feature mode."""

import re

import pytest
import torch
from transformers import Dinov2Config, Dinov2Model

from hlrp_lab.components.decoder import DECODERS
from hlrp_lab.components.target import TARGETS
from hlrp_lab.lib.errors import SpecError

SIZE, TOKENS, LATENT = 32, 2, 8
TINY = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
DINO = {"name": "DINOv2Features", "config": TINY}

pytestmark = pytest.mark.usefixtures("one_thread")


def target(block: dict, image_size: int = SIZE) -> torch.nn.Module:
    return TARGETS.build(block, "model.decoder.target", image_size=image_size)


def frames(batch: int = 3) -> torch.Tensor:
    return torch.rand(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def test_pixels_are_the_frame_itself():
    pixels = target({"name": "Pixels"})
    batch = frames()
    assert pixels(batch) is batch and pixels.is_image
    assert TARGETS.get("Pixels", "x").feature_shape(TARGETS.config({"name": "Pixels"}, "x"), SIZE) is None


def test_dinov2_features_are_frozen_patch_tokens_of_a_fixed_model():
    features = target(DINO)
    out = features(frames())
    assert out.shape == (3, (SIZE // 8) ** 2, TINY["hidden_size"])  # patches of 8 px, the CLS token dropped
    assert not features.is_image and not any(p.requires_grad for p in features.parameters())
    features.train()
    assert not features.training and not features.model.training  # frozen: always in eval mode
    torch.manual_seed(123)  # the global seed does not change the built model, nor does building move it
    state = torch.get_rng_state()
    again = target(DINO)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(again(frames()), out)
    config = TARGETS.config(DINO, "x")
    assert TARGETS.get("DINOv2Features", "x").feature_shape(config, SIZE) == out.shape[1:]


def test_dinov2_resizes_frames_to_its_image_size():
    features = target({**DINO, "image_size": 16})
    assert features(frames()).shape == (3, 4, TINY["hidden_size"])
    message = "model.decoder.target.image_size: 20 px frames do not split into the model's 8 px patches; pass e.g. -s model.decoder.target.image_size=24"
    with pytest.raises(SpecError, match=re.escape(message)):
        target({**DINO, "image_size": 20})


def test_pretrained_loads_real_weights_with_from_pretrained(tmp_path):
    torch.manual_seed(5)
    saved = Dinov2Model(Dinov2Config(**TINY, patch_size=8, image_size=SIZE)).eval()
    saved.save_pretrained(tmp_path)
    features = target({"name": "DINOv2Features", "pretrained": str(tmp_path)})
    batch = frames()
    pixels = (batch - features.mean) / features.std
    with torch.no_grad():
        expected = saved(pixel_values=pixels).last_hidden_state[:, 1:]
    assert torch.allclose(features(batch), expected, atol=1e-6)


def test_a_pretrained_model_that_cannot_be_downloaded_is_one_line_naming_the_key(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # nothing can be downloaded
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # nor is it cached
    with pytest.raises(SpecError) as err:
        target({"name": "DINOv2Features", "pretrained": "facebook/dinov2-small"})
    message = str(err.value)
    assert message.startswith("model.decoder.target.pretrained: cannot load 'facebook/dinov2-small' (")
    assert message.endswith("give a hub id this machine can download, or a local save_pretrained directory")
    assert "\n" not in message
    with pytest.raises(SpecError, match="model.decoder.target.pretrained: ./missing is not a directory"):
        target({"name": "DINOv2Features", "pretrained": "./missing"})


def test_the_feature_decoder_starts_as_the_copy_of_frame_t_features_and_learns():
    torch.manual_seed(0)
    decoder = DECODERS.build(
        {"name": "ViTDecoder", "dim": 32, "heads": 2, "depth": 1, "patch_size": 5},  # patches: pixels only
        "model.decoder",
        image_size=SIZE,
        channels=3,
        latent_dim=LATENT,
        num_tokens=TOKENS,
        features=(16, TINY["hidden_size"]),
    )
    context, goal = torch.randn(2, 4, 16, TINY["hidden_size"])
    latent = torch.randn(4, TOKENS, LATENT)
    assert torch.equal(decoder(context, latent), context)  # residual: the copy baseline
    assert not hasattr(decoder, "patch_embed") and not hasattr(decoder, "to_pixels")
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = (decoder(context, latent) - goal).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
