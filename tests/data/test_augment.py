"""Augmentation of frame pairs: each pair gets one crop and one colour jitter, the same for both frames, drawn
from a seed."""

import pytest
import torch

from hlrp_lab.data.augment import augment_pairs, augment_seed

AUGMENT = {
    "crop_scale": [0.5, 0.9],
    "crop_ratio": [0.75, 4 / 3],
    "brightness": 0.4,
    "contrast": 0.4,
    "saturation": 0.4,
    "hue": 0.1,
}
NONE = {
    "crop_scale": [1.0, 1.0],
    "crop_ratio": [1.0, 1.0],
    "brightness": 0,
    "contrast": 0,
    "saturation": 0,
    "hue": 0,
}

pytestmark = pytest.mark.usefixtures("one_thread")


def frames(seed: int) -> torch.Tensor:
    return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_both_frames_of_a_pair_get_the_same_transform():
    """Swapping the frames swaps the outputs: whatever is drawn for a pair is applied to either frame alike."""
    x, y = frames(0), frames(1)
    out_t, out_tk = augment_pairs(x, y, AUGMENT, seed=7)
    swapped_t, swapped_tk = augment_pairs(y, x, AUGMENT, seed=7)
    assert torch.allclose(out_t, swapped_tk, atol=1e-6) and torch.allclose(out_tk, swapped_t, atol=1e-6)
    same_t, same_tk = augment_pairs(x, x.clone(), AUGMENT, seed=7)
    assert torch.equal(same_t, same_tk)  # a pair without change stays without change
    assert out_t.shape == x.shape and 0 <= out_t.min() and out_t.max() <= 1
    assert (out_t - x).abs().mean() > 0.05  # it did change the frames


def test_draws_are_a_function_of_the_seed_and_differ_per_pair():
    x, y = frames(0), frames(1)
    first = augment_pairs(x, y, AUGMENT, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first, augment_pairs(x, y, AUGMENT, seed=3), strict=True))
    assert not torch.equal(first[0], augment_pairs(x, y, AUGMENT, seed=4)[0])
    same = frames(2)[:1].expand(4, -1, -1, -1)  # one frame four times: each copy gets its own draws
    out, _ = augment_pairs(same, same, AUGMENT, seed=3)
    assert not torch.equal(out[0], out[1])
    assert augment_seed(0, 5) == augment_seed(0, 5) != augment_seed(0, 6)


def test_no_crop_and_no_jitter_is_the_identity():
    x, y = frames(0), frames(1)
    out_t, out_tk = augment_pairs(x, y, NONE, seed=1)
    assert torch.allclose(out_t, x, atol=1e-5, rtol=0) and torch.allclose(out_tk, y, atol=1e-5, rtol=0)


def test_the_crop_is_a_zoom_into_the_frame():
    """A horizontal ramp cropped to a fraction of its width stays a ramp over that fraction (no jitter)."""
    ramp = torch.linspace(0, 1, 64).expand(1, 3, 64, 64).contiguous()
    crop = {**NONE, "crop_scale": [0.25, 0.25]}  # half the side each way
    out, _ = augment_pairs(ramp, ramp, crop, seed=2)
    row = out[0, 0, 32]
    assert row[-1] - row[0] == pytest.approx(0.5, abs=0.03)
    assert 0 <= row[0] <= 0.5 and torch.all(row[1:] >= row[:-1])
