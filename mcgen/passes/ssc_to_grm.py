"""Canonicalisation: ssc whose top-k can never drop a segment is grm.

docs/method.md section 5: ssc with k >= the number of segments equals grm, since the top-k
of fewer than k logits is all of them. Only explicit boundaries bound the number of cached
segments a token can see independently of the sequence length (it is len(boundaries));
constant and logarithmic segmentations grow without bound.
"""

from __future__ import annotations

import networkx as nx

from mcgen.ir.graph import clone, note


def ssc_to_grm(graph: nx.DiGraph) -> nx.DiGraph:
    """Rewrite ssc to grm when top_k covers every cached segment; otherwise copy unchanged."""
    out = clone(graph)
    agg, gate, seg = (out.nodes.get(n) for n in ("aggregate", "gate", "segments"))
    if agg is None or gate is None or seg is None or agg.get("kind") != "ssc":
        return out
    if seg.get("kind") != "explicit" or not seg.get("boundaries"):
        return out
    most = len(seg["boundaries"])
    top_k = gate.get("top_k")
    if not isinstance(top_k, int) or top_k < most:
        return out
    agg["kind"] = "grm"
    gate.update(kind="softmax", top_k=None)
    note(
        out,
        f"ssc_to_grm: aggregation ssc -> grm. top_k={top_k} >= {most}, the most cached "
        f"segments any token can see ({most} explicit boundaries), so the top-k selection "
        "always keeps every segment and the softmax runs over all of them, as in grm.",
    )
    return out
