"""Dead-cache elimination: drop the cache when nothing reads it or nothing is ever cached.

Then, if the scan does not reset at segment starts either, the segmentation itself is dead.
"""

from __future__ import annotations

import networkx as nx

from mcgen.components.registry import (
    AGGREGATIONS,
    SEGMENTATIONS,
    uncached_aggregation,
    unsegmented,
)
from mcgen.ir.graph import clone, note, prune_unused_inputs, remove_cache
from mcgen.ir.ops import input_named, reads_from, rewrite, single_memory


def dead_cache(graph: nx.DiGraph) -> nx.DiGraph:
    """Remove cache/pool/gate/read_cached and dead segmentation; otherwise copy unchanged."""
    out = clone(graph)
    core = single_memory(out)
    if core is None:
        return out
    (agg_node, agg), (scan_node, scan), (seg_node, seg) = core
    aggregation = AGGREGATIONS.find(agg.kind)
    segmentation = SEGMENTATIONS.find(seg.kind)
    if aggregation is None or segmentation is None:
        return out
    unread = not aggregation.reads_cache
    never_cached = not segmentation.has_boundaries
    if not (unread or never_cached):
        return out
    none, single = uncached_aggregation(), unsegmented()

    changes: list[str] = []
    removed = remove_cache(out)
    # The connector u feeds only the gate.
    removed += prune_unused_inputs(out)
    if removed:
        changes.append(f"removed {', '.join(removed)}")
    if agg.kind != none:
        changes.append(f"aggregation {agg.kind} -> {none}")
        rewrite(out, agg_node, kind=none)
    # soup on a deep memory had the aggregate read the mixed weights at q; with nothing left
    # to mix, the online read reads its memory itself again.
    online = reads_from(out, "online")
    query = input_named(out, "q")
    if online is not None and online[1].form == "weights" and query is not None:
        online_node, q_node = online[0], query[0]
        rewrite(out, online_node, form="state")
        if out.has_edge(q_node, agg_node):
            out.remove_edge(q_node, agg_node)
        out.add_edge(q_node, online_node, arg="q")
    why = (
        f"nothing reads the cache (aggregation {none})" if unread else "no segment boundary exists"
    )

    # With checkpoint the scan runs straight through boundaries, so once nothing is cached
    # they change nothing. With independent it resets there, and the segmentation stays.
    if seg.kind != single:
        if scan.init == "checkpoint":
            changes.append(f"segments {seg.kind} -> {single} (init checkpoint never resets)")
            rewrite(out, seg_node, kind=single, length=None, boundaries=None)
        else:
            changes.append(
                f"segments {seg.kind} kept: init independent resets the state at each segment start"
            )
    # One segment: independent (start from zero) and checkpoint are the same computation.
    elif scan.init == "independent":
        changes.append("init independent -> checkpoint (a single segment)")
        rewrite(out, scan_node, init="checkpoint")

    if changes:
        note(out, f"dead_cache: {why}: {'; '.join(changes)}.")
    return out
