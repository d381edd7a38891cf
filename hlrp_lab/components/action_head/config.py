"""Action head configs: the spec keys of each action head (pydantic only, so that a spec is checked without
torch)."""

from typing import Literal

from pydantic import Field, PositiveInt

from hlrp_lab.components.action_head import ACTION_HEADS
from hlrp_lab.lib.registry import Strict


@ACTION_HEADS.register_config("DiscreteBins")
class DiscreteBinsConfig(Strict):
    bins: int = Field(256, ge=2, description="Uniform bins over [-1, 1] per action dimension and step.")
    hidden: PositiveInt | None = Field(
        None, description="Width of one hidden GELU layer before the logits; null: a single linear layer."
    )


@ACTION_HEADS.register_config("FlowMatching")
class FlowMatchingConfig(Strict):
    hidden: PositiveInt = Field(256, description="Width of the velocity network's hidden layers.")
    layers: PositiveInt = Field(3, description="Hidden Linear + GELU layers of the velocity network.")
    time_dim: int = Field(32, ge=2, multiple_of=2, description="Size of the sinusoidal time embedding.")
    steps: PositiveInt = Field(10, description="Euler integration steps of predict.")
    time_sampling: Literal["beta", "uniform"] = Field(
        "beta",
        description="Training times: beta is pi0's, tau = 0.999 (1 - Beta(1.5, 1)), "
        "which favours the noisier times; uniform is U(0, 1).",
    )


@ACTION_HEADS.register_config("MLPRegression")
class MLPRegressionConfig(Strict):
    hidden: PositiveInt = Field(256, description="Width of the hidden layers.")
    layers: PositiveInt = Field(2, description="Hidden Linear + GELU layers before the output layer.")
    loss: Literal["l1", "mse"] = Field("l1", description="Regression loss against the target chunk.")
