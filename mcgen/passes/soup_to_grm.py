"""Canonicalisation: `soup` becomes `grm` for a matrix memory (docs/method.md section 5).

For a deep memory (dla, titans: graph.graph["memory"] == "deep") the pass is a plain copy
with no note: an MLP is not linear in its weights, so mixing the weights and reading once
(soup) differs from reading every memory and mixing the reads (grm), and the IR keeps both.
"""

from __future__ import annotations

import networkx as nx

from mcgen.ir.graph import clone, note


def soup_to_grm(graph: nx.DiGraph) -> nx.DiGraph:
    """Rewrite aggregation soup to grm when the memory is a matrix; otherwise copy unchanged."""
    out = clone(graph)
    agg = out.nodes.get("aggregate")
    # Only a matrix memory: deep memories (an MLP per head) read non-linearly, and there
    # soup and grm really differ.
    if agg is None or agg.get("kind") != "soup" or out.graph.get("memory") != "matrix":
        return out
    agg["kind"] = "grm"
    note(
        out,
        "soup_to_grm: aggregation soup -> grm. Reading a matrix memory is linear in its state, "
        "(sum_i w_i C_i) q = sum_i w_i (C_i q), so mixing the memories with the gate weights "
        "and reading once equals reading each memory and mixing the reads; grm avoids "
        "materialising a mixed V x K state per token.",
    )
    return out
