"""The vla family: configs in config.py (pydantic only), one module per implementation."""

from hlrp_lab.lib.registry import Registry

VLAS = Registry("vla", __name__)
