"""SmolVLM (Idefics3 architecture): a SigLIP vision tower, pixel shuffle, a Llama language model.

One frame is one global image tile (no image splitting): (image_size / patch_size)^2 / scale_factor^2 image
tokens. Real weights: ``HuggingFaceTB/SmolVLM-256M-Instruct`` (512 px tiles, 64 image tokens).
"""

import torch
from transformers import SmolVLMForConditionalGeneration

from hlrp_lab.components.vla import VLAS
from hlrp_lab.components.vla.base import SMALL_TEXT_MODEL, VLABackbone

SMALL_CONFIG = {
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 64,
        "patch_size": 8,
    },
    "text_config": {"model_type": "llama", **SMALL_TEXT_MODEL},
    "scale_factor": 2,
    "tie_word_embeddings": False,
}


@VLAS.register
class SmolVLM(VLABackbone):
    """SmolVLM / Idefics3 from transformers; small default: 64 px frames, 16 image tokens, 2+2 layers."""

    model_class = SmolVLMForConditionalGeneration
    small_defaults = SMALL_CONFIG
    image_mean = (0.5, 0.5, 0.5)
    image_std = (0.5, 0.5, 0.5)

    def image_token_names(self) -> dict[str, str]:
        return {"image_token_id": "<image>"}

    def vision_tower_name(self) -> str:
        return "model.vision_model"

    def image_multiple(self) -> int:
        return self.model.config.vision_config.patch_size * self.model.config.scale_factor

    def image_tokens(self) -> int:
        vision = self.model.config.vision_config
        return (self.image_size // vision.patch_size) ** 2 // self.model.config.scale_factor**2

    def image_block(self) -> str:
        images = self.token(self.model.config.image_token_id) * self.image_tokens()
        if "<global-img>" not in self.tokenizer.get_vocab():  # a local tokenizer: the image tokens alone
            return images
        around = "<fake_token_around_image>"  # the pretrained processor's single-tile prompt
        return f"<|im_start|>User:{around}<global-img>{images}{around}"

    def image_inputs(self, pixels: torch.Tensor, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        batch, _, height, width = pixels.shape
        mask = torch.ones(batch, 1, height, width, dtype=torch.bool, device=pixels.device)
        return {"pixel_values": pixels[:, None], "pixel_attention_mask": mask}
