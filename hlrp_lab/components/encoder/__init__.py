"""The encoder family: configs in config.py (pydantic only), one module per implementation."""

from hlrp_lab.lib.registry import Registry

ENCODERS = Registry("encoder", __name__)
