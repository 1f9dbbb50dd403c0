"""titans: a deep memory trained on ||M(k_t) - v_t||^2 with momentum and decay (method 6).

S <- eta S - theta grad, W <- (1 - alpha) W + S; eta (momentum) and alpha (decay) are
numbers or, left out, per-token op inputs (eta, and g = log(1 - alpha)).
"""

from __future__ import annotations

from mcgen.components.fields import DEEP, DEEP_DECAY, DEEP_MOMENTUM
from mcgen.components.recurrences.deep import DeepRecurrence


class Titans(DeepRecurrence):
    name = "titans"
    fields = (DEEP, DEEP_MOMENTUM, DEEP_DECAY)
    rates = ("lr", "momentum", "decay")
    squared_loss = True
    step_flops = 4


COMPONENT = Titans()
