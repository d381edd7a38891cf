"""The decoder family: configs in config.py (pydantic only), one module per implementation."""

from hlrp_lab.lib.registry import Registry

DECODERS = Registry("decoder", __name__)
