"""Data sources: each yields Episodes from somewhere (a generator, videos, a simulator, a LeRobot dataset) by
name."""

from hlrp_lab.lib.registry import Registry

DATA_SOURCES = Registry("data source", __name__)
