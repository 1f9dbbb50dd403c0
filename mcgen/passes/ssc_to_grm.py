"""Canonicalisation: ssc whose top-k can never drop a segment is grm.

docs/method.md section 5: ssc with k >= the number of segments equals grm, since the top-k
of fewer than k logits is all of them. Only explicit boundaries bound the number of cached
segments a token can see independently of the sequence length (it is len(boundaries));
constant and logarithmic segmentations grow without bound.
"""

from __future__ import annotations

import networkx as nx

from mcgen.components.registry import AGGREGATIONS, SEGMENTATIONS
from mcgen.ir.graph import clone, note
from mcgen.ir.ops import Aggregate, Gate, Segmentation, nodes_of, rewrite


def ssc_to_grm(graph: nx.DiGraph) -> nx.DiGraph:
    """Rewrite ssc to grm when top_k covers every cached segment; otherwise copy unchanged.

    Generally: an aggregation that declares a `full_selection_equivalent` becomes that one
    when its top_k is at least the most memories the segmentation can ever cache."""
    out = clone(graph)
    aggs, gates, segs = (list(nodes_of(out, kind)) for kind in (Aggregate, Gate, Segmentation))
    if len(aggs) != 1 or len(gates) != 1 or len(segs) != 1:
        return out
    (agg_node, agg), (gate_node, gate), (_, seg) = aggs[0], gates[0], segs[0]
    aggregation = AGGREGATIONS.find(agg.kind)
    segmentation = SEGMENTATIONS.find(seg.kind)
    if aggregation is None or segmentation is None:
        return out
    target = aggregation.full_selection_equivalent
    most = segmentation.most_cached(seg)
    top_k = gate.top_k
    if target is None or most is None or not isinstance(top_k, int) or top_k < most:
        return out
    rewrite(out, agg_node, kind=target)
    rewrite(out, gate_node, kind=AGGREGATIONS.get(target).gate, top_k=None)
    note(
        out,
        f"ssc_to_grm: aggregation {aggregation.name} -> {target}. top_k={top_k} >= {most}, "
        f"the most cached segments any token can see ({most} {segmentation.name} boundaries), "
        "so the top-k selection always keeps every segment and the softmax runs over all of "
        f"them, as in {target}.",
    )
    return out
