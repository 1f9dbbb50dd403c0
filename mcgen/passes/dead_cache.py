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
from mcgen.ir.graph import CACHE_NODES, clone, note, prune_unused_inputs, remove_nodes


def dead_cache(graph: nx.DiGraph) -> nx.DiGraph:
    """Remove cache/pool/gate/read_cached and dead segmentation; otherwise copy unchanged."""
    out = clone(graph)
    agg, scan, seg = (out.nodes.get(n) for n in ("aggregate", "scan", "segments"))
    if agg is None or scan is None or seg is None:
        return out
    aggregation = AGGREGATIONS.find(agg.get("kind"))
    segmentation = SEGMENTATIONS.find(seg.get("kind"))
    if aggregation is None or segmentation is None:
        return out
    unread = not aggregation.reads_cache
    never_cached = not segmentation.has_boundaries
    if not (unread or never_cached):
        return out
    none, single = uncached_aggregation(), unsegmented()

    changes: list[str] = []
    removed = remove_nodes(out, CACHE_NODES)
    # The connector u feeds only the gate.
    removed += prune_unused_inputs(out)
    if removed:
        changes.append(f"removed {', '.join(removed)}")
    if agg.get("kind") != none:
        changes.append(f"aggregation {agg['kind']} -> {none}")
        agg["kind"] = none
    # soup on a deep memory had the aggregate read the mixed weights at q; with nothing left
    # to mix, the online read reads its memory itself again.
    online = out.nodes.get("read_online")
    if online is not None and online.get("form") == "weights":
        online["form"] = "state"
        if out.has_edge("q", "aggregate"):
            out.remove_edge("q", "aggregate")
        out.add_edge("q", "read_online", arg="q")
    why = (
        f"nothing reads the cache (aggregation {none})" if unread else "no segment boundary exists"
    )

    # With checkpoint the scan runs straight through boundaries, so once nothing is cached
    # they change nothing. With independent it resets there, and the segmentation stays.
    if seg.get("kind") != single:
        if scan.get("init") == "checkpoint":
            changes.append(f"segments {seg['kind']} -> {single} (init checkpoint never resets)")
            seg.update(kind=single, length=None, boundaries=None)
        else:
            changes.append(
                f"segments {seg['kind']} kept: init independent resets the state at each "
                "segment start"
            )
    # One segment: independent (start from zero) and checkpoint are the same computation.
    elif scan.get("init") == "independent":
        changes.append("init independent -> checkpoint (a single segment)")
        scan["init"] = "checkpoint"

    if changes:
        note(out, f"dead_cache: {why}: {'; '.join(changes)}.")
    return out
