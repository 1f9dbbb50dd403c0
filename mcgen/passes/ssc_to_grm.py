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


def ssc_to_grm(graph: nx.DiGraph) -> nx.DiGraph:
    """Rewrite ssc to grm when top_k covers every cached segment; otherwise copy unchanged.

    Generally: an aggregation that declares a `full_selection_equivalent` becomes that one
    when its top_k is at least the most memories the segmentation can ever cache."""
    out = clone(graph)
    agg, gate, seg = (out.nodes.get(n) for n in ("aggregate", "gate", "segments"))
    if agg is None or gate is None or seg is None:
        return out
    aggregation = AGGREGATIONS.find(agg.get("kind"))
    segmentation = SEGMENTATIONS.find(seg.get("kind"))
    if aggregation is None or segmentation is None:
        return out
    target = aggregation.full_selection_equivalent
    most = segmentation.most_cached(seg)
    top_k = gate.get("top_k")
    if target is None or most is None or not isinstance(top_k, int) or top_k < most:
        return out
    agg["kind"] = target
    gate.update(kind=AGGREGATIONS.get(target).gate, top_k=None)
    note(
        out,
        f"ssc_to_grm: aggregation {aggregation.name} -> {target}. top_k={top_k} >= {most}, "
        f"the most cached segments any token can see ({most} {segmentation.name} boundaries), "
        "so the top-k selection always keeps every segment and the softmax runs over all of "
        f"them, as in {target}.",
    )
    return out
