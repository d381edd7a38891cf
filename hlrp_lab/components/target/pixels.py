"""The pixel target: the decoder predicts frame t+k itself (today's LAQ, LAPA's)."""

from torch import Tensor, nn

from hlrp_lab.components.target import TARGETS
from hlrp_lab.components.target.config import PixelsConfig


@TARGETS.register
class Pixels(nn.Module):
    """Frames (B, 3, H, W) in [0, 1], as they are."""

    Config = PixelsConfig
    is_image = True  # pictures show it; scores clamp predictions to [0, 1] and PSNR has peak 1

    def __init__(self, config: PixelsConfig, *, image_size: int):
        super().__init__()

    @classmethod
    def feature_shape(cls, config: PixelsConfig, image_size: int) -> tuple[int, int] | None:
        """None: the decoder predicts an image, not feature tokens."""
        return None

    def forward(self, frames: Tensor) -> Tensor:
        return frames
