"""grm: gated residual memory, a softmax over every visible memory's read (method 4)."""

from __future__ import annotations

from mcgen.components.aggregations.gated import GatedAggregation


class Grm(GatedAggregation):
    name = "grm"


COMPONENT = Grm()
