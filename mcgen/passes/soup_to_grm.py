"""Canonicalisation: `soup` becomes `grm` for a matrix memory (docs/method.md section 5).

For a deep memory (dla, titans: graph.graph["memory"] == "deep") the pass is a plain copy
with no note: an MLP is not linear in its weights, so mixing the weights and reading once
(soup) differs from reading every memory and mixing the reads (grm), and the IR keeps both.
"""

from __future__ import annotations

import networkx as nx

from mcgen.components.registry import AGGREGATIONS
from mcgen.ir.graph import clone, note
from mcgen.ir.ops import Aggregate, nodes_of, rewrite


def soup_to_grm(graph: nx.DiGraph) -> nx.DiGraph:
    """Rewrite aggregation soup to grm when the memory is a matrix; otherwise copy unchanged.

    Generally: an aggregation that declares a `matrix_equivalent` becomes that one."""
    out = clone(graph)
    # Only a matrix memory: deep memories (an MLP per head) read non-linearly, and there
    # soup and grm really differ.
    if out.graph.get("memory") != "matrix":
        return out
    for node, agg in nodes_of(out, Aggregate):
        aggregation = AGGREGATIONS.find(agg.kind)
        if aggregation is None or aggregation.matrix_equivalent is None:
            continue
        rewrite(out, node, kind=aggregation.matrix_equivalent)
        _explain(out, aggregation.name, aggregation.matrix_equivalent)
    return out


def _explain(out: nx.DiGraph, source: str, target: str) -> None:
    note(
        out,
        f"soup_to_grm: aggregation {source} -> {target}. Reading a matrix memory is linear in "
        "its state, (sum_i w_i C_i) q = sum_i w_i (C_i q), so mixing the memories with the gate "
        "weights and reading once equals reading each memory and mixing the reads; "
        f"{target} avoids materialising a mixed V x K state per token.",
    )
