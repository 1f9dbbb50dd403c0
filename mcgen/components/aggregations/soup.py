"""soup: mix the memories themselves with the gate weights, then read the mixture once.

On a matrix memory a read is linear in the state, (sum_i w_i C_i) q = sum_i w_i (C_i q), so
soup is grm (passes/soup_to_grm.py). On a deep memory (an MLP) it is not, and soup mixes
the weights of every visible memory and the online one, 2P FLOPs per memory, then reads
the mixture once (2P).
"""

from __future__ import annotations

from mcgen.components.aggregations.gated import GatedAggregation
from mcgen.components.base import CostContext


class Soup(GatedAggregation):
    name = "soup"
    mixes_weights = True
    matrix_equivalent = "grm"

    def aggregate_flops(self, ctx: CostContext) -> float:
        if not ctx.deep:
            return super().aggregate_flops(ctx)
        return 2 * ctx.state * (ctx.mean_read + 1) + 2 * ctx.state


COMPONENT = Soup()
