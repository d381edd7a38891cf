"""Stages: configs in config.py (pydantic only), one module per stage's training logic."""

from hlrp_lab.data.sources import DATA_SOURCES
from hlrp_lab.lib.registry import Registry

STAGES = Registry("stage", __name__)
DATA_SOURCES.add_package(__name__)  # the label source (label.py) needs the LAQ stage
