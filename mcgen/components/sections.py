"""Spec sections that components own: pydantic models the spec schema embeds.

They import nothing of mcgen, so a component can build one (a default) while the schema,
which asks the registry for component names, imports the components.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# Logit and rate factors: larger ones overflow float32 activations to inf at once.
MAX_FACTOR = 1e3
Activation = Literal["gelu", "silu", "relu", "tanh"]
ACTIVATIONS = Activation.__args__  # the same names, for checks of a graph's attributes


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# A rate is a constant, or `data`: projected per token by MCLayer (an op input).
Rate = Annotated[float, Field(ge=0, le=MAX_FACTOR, allow_inf_nan=False)] | Literal["data"]
Fraction = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] | Literal["data"]


class DeepMemory(Strict):
    """The MLP memory M(x) = x + W_L act(... act(W_1 x)) of dla and titans."""

    depth: Annotated[int, Field(ge=1, le=4)] = 2
    expansion: Annotated[int, Field(ge=1, le=16)] = 2  # hidden width = expansion * key_dim
    activation: Activation = "gelu"
    # Tokens whose inner gradients are taken at the same weights; divides segment lengths.
    minibatch: Annotated[int, Field(ge=1, le=4096)] = 1
    lr: Rate = "data"  # theta_t, the inner learning rate
    momentum: Fraction | None = None  # eta_t, titans only (default data)
    decay: Fraction | None = None  # alpha_t, titans only (default data): W <- (1 - alpha) W + S
