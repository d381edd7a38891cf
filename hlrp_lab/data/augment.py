"""Augmentation of training frame pairs: a random resized crop and a colour jitter drawn per pair and applied
identically to frame t and frame t+k, so that the change between them is still the action's (the
recommendation of "What Do Latent Action Models Actually Learn?"). Plain torch on batched float frames, on any
device; the draws are a function of a seed, so a batch stays a function of its index.

The crop follows torchvision's RandomResizedCrop (an area fraction and an aspect ratio, log-uniform; a side
longer than the frame is shortened to it, where torchvision would redraw), bilinear. The jitter follows its
ColorJitter in a fixed order (brightness, contrast, saturation, hue), with two differences that make it one
transform of the pair: contrast blends towards the mean grey of both frames, and hue rotates colours in YIQ
space (a linear map) rather than in HSV.
"""

import math

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale
RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))
STREAM = 0xA06  # separates these draws from the batch indices drawn from the same (seed, index)


def augment_seed(seed: int, index: int) -> int:
    """The seed of micro-batch ``index``'s draws in a session of ``seed``."""
    return int(np.random.SeedSequence([seed % 2**63, index, STREAM]).generate_state(1, dtype=np.uint64)[0])


def augment_pairs(frame_t: Tensor, frame_tk: Tensor, augment: dict, seed: int) -> tuple[Tensor, Tensor]:
    """Frames (B, 3, H, W) in [0, 1], each pair cropped and jittered alike; ``augment`` holds the
    ``data.augment`` keys."""
    draws = torch.rand((len(frame_t), 8), generator=torch.Generator().manual_seed(seed)).to(frame_t.device)
    pairs = resized_crop(torch.cat([frame_t, frame_tk], dim=1), augment, draws[:, :4])  # (B, 6, H, W)
    pairs = jitter(pairs.unflatten(1, (2, 3)), augment, draws[:, 4:])  # (B, 2, 3, H, W)
    return pairs[:, 0], pairs[:, 1]


def spread(draws: Tensor, low: float, high: float) -> Tensor:
    """Uniform draws in [0, 1) mapped to [low, high)."""
    return low + (high - low) * draws


def resized_crop(pairs: Tensor, augment: dict, draws: Tensor) -> Tensor:
    """A crop of each (B, C, H, W) image of ``crop_scale`` of its area and ``crop_ratio`` width / height,
    resized back to (H, W); ``draws`` (B, 4) uniform."""
    area = spread(draws[:, 0], *augment["crop_scale"])
    ratio = torch.exp(spread(draws[:, 1], *(math.log(r) for r in augment["crop_ratio"])))
    width, height = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
    centre_x, centre_y = spread(draws[:, 2], -1, 1) * (1 - width), spread(draws[:, 3], -1, 1) * (1 - height)
    theta = torch.zeros(len(pairs), 2, 3, device=pairs.device)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = width, centre_x, height, centre_y
    grid = F.affine_grid(theta, list(pairs.shape), align_corners=False)
    return F.grid_sample(pairs, grid, mode="bilinear", padding_mode="border", align_corners=False)


def jitter(frames: Tensor, augment: dict, draws: Tensor) -> Tensor:
    """Frames (B, 2, 3, H, W) with each pair's brightness, contrast, saturation and hue changed alike;
    ``draws`` (B, 4) uniform."""
    factor = {
        key: spread(draws[:, i], 1 - augment[key], 1 + augment[key]).clamp_min(0).view(-1, 1, 1, 1, 1)
        for i, key in enumerate(("brightness", "contrast", "saturation"))
    }
    frames = (frames * factor["brightness"]).clamp(0, 1)
    mean = grey(frames).mean(dim=(1, 2, 3, 4), keepdim=True)
    frames = blend(frames, mean, factor["contrast"])
    frames = blend(frames, grey(frames), factor["saturation"])
    angle = spread(draws[:, 3], -augment["hue"], augment["hue"]) * 2 * math.pi
    return torch.einsum("bij,btjhw->btihw", hue_rotation(angle), frames).clamp(0, 1)


def grey(frames: Tensor) -> Tensor:
    """(..., 1, H, W) luma of (..., 3, H, W) frames."""
    weights = torch.tensor(GREY, device=frames.device).view(3, 1, 1)
    return (frames * weights).sum(-3, keepdim=True)


def blend(frames: Tensor, towards: Tensor, factor: Tensor) -> Tensor:
    """``factor`` x frames + (1 - factor) x ``towards``, clamped to [0, 1] (torchvision's _blend)."""
    return (factor * frames + (1 - factor) * towards).clamp(0, 1)


def hue_rotation(angle: Tensor) -> Tensor:
    """(B, 3, 3) RGB -> RGB maps rotating the chroma plane of YIQ by ``angle`` (B,) radians."""
    to_yiq = torch.tensor(RGB_TO_YIQ, device=angle.device)
    rotation = torch.zeros(len(angle), 3, 3, device=angle.device)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = angle.cos(), -angle.sin()
    rotation[:, 2, 1], rotation[:, 2, 2] = angle.sin(), angle.cos()
    return torch.linalg.inv(to_yiq) @ rotation @ to_yiq
