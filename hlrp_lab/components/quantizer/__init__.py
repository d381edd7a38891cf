"""The quantizer family: configs in config.py (pydantic only), one module per implementation."""

from hlrp_lab.lib.registry import Registry

QUANTIZERS = Registry("quantizer", __name__)
