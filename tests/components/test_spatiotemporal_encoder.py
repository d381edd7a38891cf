"""ViTEncoder's two layouts: joint attention (the default, unchanged) and LAPA's factorised spatio-temporal
attention, whose spatial layers stay within a frame and whose temporal layers mix the two frames at each patch
position only."""

import pytest
import torch

from hlrp_lab.components.encoder import ENCODERS

SIZE, TOKENS, LATENT, PATCHES = 32, 4, 16, 16  # 32 px frames in patches of 8: a 4 x 4 grid
JOINT = {"name": "ViTEncoder", "dim": 32, "heads": 2, "depth": 2}
FACTORIZED = {**JOINT, "depth": 1, "temporal_depth": 1}

pytestmark = pytest.mark.usefixtures("one_thread")


def encoder(block: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    built = ENCODERS.build(
        block, "model.encoder", image_size=SIZE, channels=3, num_tokens=TOKENS, out_dim=LATENT
    )
    return built.eval()


def frames(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(2, 3, SIZE, SIZE, generator=generator) for _ in range(2))


@pytest.mark.parametrize("block", [JOINT, FACTORIZED], ids=["joint", "factorized"])
@torch.no_grad()
def test_the_action_depends_on_frame_t_plus_k(block):
    """Both layouts read the later frame: another frame t+k gives other action tokens."""
    model = encoder(block)
    frame_t, frame_tk = frames(0)
    _, other = frames(1)
    action = model(frame_t, frame_tk)
    assert action.shape == (2, TOKENS, LATENT)
    assert (action - model(frame_t, other)).abs().max() > 1e-3
    assert torch.equal(action, model(frame_t, frame_tk))  # and nothing else: eval mode is deterministic


def test_the_default_is_the_joint_encoder_with_its_weights_named_as_before():
    """Existing specs build the same modules under the same names (their checkpoints load)."""
    names = {name.split(".")[0] for name in encoder(JOINT).state_dict()}
    assert names == {
        "patch_embed",
        "change_embed",
        "position",
        "time",
        "queries",
        "transformer",
        "norm",
        "head",
    }
    factorized = {name.split(".")[0] for name in encoder(FACTORIZED).state_dict()}
    assert factorized == {
        "patch_embed",
        "position",
        "time",
        "queries",
        "spatial",
        "temporal",
        "readout",
        "norm",
        "head",
    }


@torch.no_grad()
def test_spatial_layers_stay_within_each_frame():
    model = encoder(FACTORIZED)
    tokens = model.frame_tokens(*frames(0))
    changed = tokens.clone()
    changed[:, 1] += torch.randn_like(changed[:, 1])  # another frame t+k
    before, after = model.within_frames(tokens), model.within_frames(changed)
    assert torch.equal(before[:, 0], after[:, 0])  # frame t's tokens never see frame t+k's
    assert (before[:, 1] - after[:, 1]).abs().amin(dim=-1).gt(0).all()  # every patch of frame t+k changes


@torch.no_grad()
def test_temporal_layers_mix_the_two_frames_at_each_patch_position_only():
    model = encoder(FACTORIZED)
    tokens = model.frame_tokens(*frames(0))
    changed = tokens.clone()
    position = 5
    changed[:, 1, position] += torch.randn_like(changed[:, 1, position])  # frame t+k's token at one position
    difference = (model.across_frames(changed) - model.across_frames(tokens)).abs().amax(dim=-1)  # (B, 2, N)
    assert difference.shape == (2, 2, PATCHES)
    assert (difference[:, 0, position] > 1e-4).all()  # frame t's token at that position reads frame t+k
    others = torch.arange(PATCHES) != position
    assert torch.equal(difference[:, :, others], torch.zeros_like(difference[:, :, others]))


def test_temporal_depth_counts_layers_after_the_spatial_ones():
    model = encoder({**FACTORIZED, "depth": 3, "temporal_depth": 2})
    assert len(model.spatial.layers) == 3 and len(model.temporal.layers) == 2
    assert len(encoder({**JOINT, "depth": 3}).transformer.layers) == 3
