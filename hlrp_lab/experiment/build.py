"""The second step of checking a spec, which needs torch: the optimizer's arguments against its torch.optim
class, and a dry build of the model on the meta device (no memory, no data), so that size mismatches fail
before a run directory exists. The first step, every key without torch, is ``spec.check.check_spec``."""

import torch

from hlrp_lab.experiment.optim import optimizer_kwargs
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.stages import STAGES


def dry_build(spec: dict) -> dict:
    """Build a checked ``spec``'s model on the meta device and check its optimizer; returns ``spec``."""
    optimizer_kwargs(spec["optim"])
    try:
        with torch.device("meta"):
            STAGES.get(spec["stage"], "stage").check_model(spec)
    except SpecError:
        raise  # names its field already
    except ValueError as err:
        raise SpecError(f"model: {err}") from None
    return spec
