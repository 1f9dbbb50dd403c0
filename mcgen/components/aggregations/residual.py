"""residual: o_t = the online read plus every cached memory's read, unweighted (method 4)."""

from __future__ import annotations

from mcgen.components.base import AggregationComponent, CostContext


class Residual(AggregationComponent):
    name = "residual"
    sums_reads = True

    def aggregate_flops(self, ctx: CostContext) -> float:
        return ctx.value_dim * ctx.mean_read  # add the cached reads to the online one


COMPONENT = Residual()
