"""What the gated aggregations (grm, soup, ssc) share: gate weights over the memories.

docs/method.md section 4. Each memory gets a logit <u_t, d_i> * gate_scale against its
segment's descriptor d_i (the pooled keys), the online memory one against the running
descriptor; a softmax of the logits weighs the reads. Weighing and adding every read
costs 2V FLOPs per read, the online one included.
"""

from __future__ import annotations

from mcgen.components.base import AggregationComponent, CostContext
from mcgen.components.fields import GATE_FIELDS


class GatedAggregation(AggregationComponent):
    fields = GATE_FIELDS
    gate = "softmax"

    def aggregate_flops(self, ctx: CostContext) -> float:
        return 2 * ctx.value_dim * (ctx.mean_read + 1)
