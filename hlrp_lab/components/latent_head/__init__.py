"""The latent head family: configs in config.py (pydantic only), one module per implementation."""

from hlrp_lab.lib.registry import Registry

LATENT_HEADS = Registry("latent head", __name__)
