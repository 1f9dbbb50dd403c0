"""ssc: sparse selective caching, a softmax over the top_k memories by gate logit (method 4).

When top_k covers every memory a token can ever see, the selection keeps them all and ssc
is grm (passes/ssc_to_grm.py).
"""

from __future__ import annotations

from mcgen.components.aggregations.gated import GatedAggregation
from mcgen.components.fields import GATE_FIELDS, TOP_K


class Ssc(GatedAggregation):
    name = "ssc"
    fields = (*GATE_FIELDS, TOP_K)
    gate = "topk_softmax"
    full_selection_equivalent = "grm"


COMPONENT = Ssc()
