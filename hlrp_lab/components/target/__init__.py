"""The target family: what an LAQ decoder predicts of frame t+k (pixels, or frozen vision features); configs in
config.py (pydantic only), one module per implementation."""

from hlrp_lab.lib.registry import Registry

TARGETS = Registry("target", __name__)
