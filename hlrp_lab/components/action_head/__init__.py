"""The action head family: configs in config.py (pydantic only), one module per implementation."""

from hlrp_lab.lib.registry import Registry

ACTION_HEADS = Registry("action head", __name__)
