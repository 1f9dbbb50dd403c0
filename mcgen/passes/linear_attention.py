"""Canonicalisation: residual + independent + linear is plain causal linear attention.

docs/method.md section 5 lists it as an identity: o_t = sum_{j<=t} (scale q_t . k_j) v_j
for any segmentation. One running state replaces the cache and every cached read.
"""

from __future__ import annotations

import networkx as nx

from mcgen.components.registry import (
    AGGREGATIONS,
    RECURRENCES,
    uncached_aggregation,
    unsegmented,
)
from mcgen.ir.graph import clone, note, remove_cache
from mcgen.ir.ops import rewrite, single_memory


def linear_attention(graph: nx.DiGraph) -> nx.DiGraph:
    """Rewrite residual/independent/linear to one unsegmented scan; otherwise copy unchanged.

    Generally: an aggregation that sums the reads unweighted, over a recurrence whose state is
    a plain sum of v k^T (components' `sums_reads` and `additive`)."""
    out = clone(graph)
    core = single_memory(out)
    if core is None:
        return out
    (agg_node, agg), (scan_node, scan), (seg_node, seg) = core
    aggregation = AGGREGATIONS.find(agg.kind)
    recurrence = RECURRENCES.find(scan.recurrence)
    # Decay or delta updates make a segment's state depend on where it started, and with
    # checkpoint the caches overlap (each holds all earlier tokens): neither sums to one state.
    if not (
        aggregation is not None
        and aggregation.sums_reads
        and scan.init == "independent"
        and recurrence is not None
        and recurrence.additive
    ):
        return out
    removed = remove_cache(out)
    none, single = uncached_aggregation(), unsegmented()
    rewrite(out, agg_node, kind=none)
    rewrite(out, scan_node, init="checkpoint")
    rewrite(out, seg_node, kind=single, length=None, boundaries=None)
    note(
        out,
        f"linear_attention: {aggregation.name} + independent + {recurrence.name} -> plain "
        f"causal linear attention (segments {seg.kind} -> {single}, init independent -> "
        f"checkpoint, aggregation -> {none}; removed "
        f"{', '.join(removed) or 'nothing'}). Each segment state is sum_j v_j k_j^T over its own "
        "tokens, so the cached states plus the online state read with the same query add up "
        "to the one running state over all tokens so far.",
    )
    return out
