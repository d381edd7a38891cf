"""Qwen2-VL: a ViT over 2x2-merged patches with multimodal rotary positions, a Qwen2 language model.

A frame becomes (image_size / patch_size)^2 / spatial_merge_size^2 image tokens between the vision start and
end tokens; its pixels are cut into patches in the order of Qwen2-VL's image processor (a still image is
repeated over the temporal patch). Real weights: ``Qwen/Qwen2-VL-2B-Instruct`` (patches of 14 merged 2x2: set
``image_size`` to a multiple of 28, e.g. 224).
"""

import torch
from transformers import (
    PreTrainedTokenizerBase,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
)

from hlrp_lab.components.vla import VLAS
from hlrp_lab.components.vla.base import SMALL_TEXT_MODEL, VLABackbone

SMALL_CONFIG = {
    "vision_config": {
        "depth": 2,
        "embed_dim": 32,
        "hidden_size": 64,  # = the text hidden size
        "num_heads": 2,
        "mlp_ratio": 2,
        "patch_size": 8,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
    "text_config": {
        **SMALL_TEXT_MODEL,
        # head_dim 16: the (time, height, width) sections of the rotary dims sum to head_dim / 2
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    },
    "tie_word_embeddings": False,
}
SMALL_IMAGE_SIZE = 64


@VLAS.register
class Qwen2VL(VLABackbone):
    """Qwen2-VL from transformers; small default: 64 px frames, 16 image tokens, 2+2 layers."""

    model_class = Qwen2VLForConditionalGeneration
    small_defaults = SMALL_CONFIG
    image_mean = (0.48145466, 0.4578275, 0.40821073)  # CLIP's, as Qwen2-VL's image processor
    image_std = (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, config, *, tokenizer: PreTrainedTokenizerBase, query_tokens: list[str] | None = None):
        if config.image_size is None:  # the vision config has no image size: Qwen2-VL takes any
            config = config.model_copy(update={"image_size": SMALL_IMAGE_SIZE})
        super().__init__(config, tokenizer=tokenizer, query_tokens=query_tokens)

    def image_token_names(self) -> dict[str, str]:
        return {
            "image_token_id": "<image>",
            "vision_start_token_id": "<vision_start>",
            "vision_end_token_id": "<vision_end>",
        }

    def vision_tower_name(self) -> str:
        return "model.visual"

    def image_multiple(self) -> int:
        vision = self.model.config.vision_config
        return vision.patch_size * vision.spatial_merge_size

    def image_tokens(self) -> int:
        vision = self.model.config.vision_config
        return (self.image_size // vision.patch_size) ** 2 // vision.spatial_merge_size**2

    def image_block(self) -> str:
        config = self.model.config
        images = self.token(config.image_token_id) * self.image_tokens()
        return f"{self.token(config.vision_start_token_id)}{images}{self.token(config.vision_end_token_id)}"

    def image_inputs(self, pixels: torch.Tensor, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        vision = self.model.config.vision_config
        patches, grid = patchify(
            pixels, vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size
        )
        image_tokens = (input_ids == self.model.config.image_token_id).int()
        return {"pixel_values": patches, "image_grid_thw": grid, "mm_token_type_ids": image_tokens}


# Qwen2.5-VL's vision tower: SwiGLU MLPs, RMSNorm, window attention with a few full-attention blocks.
SMALL_CONFIG_25 = {
    **SMALL_CONFIG,
    "vision_config": {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,  # = the text hidden size
        "patch_size": 8,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 32,  # 2x2 merged patches per window
        "fullatt_block_indexes": [1],
    },
}


@VLAS.register
class Qwen25VL(Qwen2VL):
    """Qwen2.5-VL from transformers (frames enter as in Qwen2-VL); small default: 64 px frames, 16 image
    tokens, 2+2 layers. Real weights: ``Qwen/Qwen2.5-VL-3B-Instruct``, ``Qwen/Qwen2.5-VL-7B-Instruct``
    (``specs/configs/qwen2_5_vl_7b.json`` is the latter's architecture)."""

    model_class = Qwen2_5_VLForConditionalGeneration
    small_defaults = SMALL_CONFIG_25


def patchify(
    images: torch.Tensor, patch: int, merge: int, temporal: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> patches (B * h * w, C * temporal * patch^2) in Qwen2-VL's order, and the (t, h, w)
    grid of each image."""
    batch, channels, height, width = images.shape
    rows, cols = height // patch, width // patch
    x = images.unsqueeze(1).expand(batch, temporal, channels, height, width)
    x = x.reshape(batch, temporal, channels, rows // merge, merge, patch, cols // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # B, h/m, w/m, m, m, C, temporal, p, p
    patches = x.reshape(batch * rows * cols, channels * temporal * patch * patch)
    grid = torch.tensor([[1, rows, cols]] * batch, device=images.device)
    return patches, grid
