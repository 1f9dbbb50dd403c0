"""The plan: what the canonical IR asks the generated package to compute.

Codegen reads only this (never the raw spec), so every rewrite made by a pass is
what the templates render. The reference, by contrast, transcribes the spec as the
user wrote it: comparing the two validates the passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import networkx as nx

from mcgen.ir.errors import IRError
from mcgen.spec.schema import DECAY_RECURRENCES, DELTA_RECURRENCES, Spec


@dataclass(frozen=True)
class Plan:
    recurrence: Literal["linear", "decay", "delta", "gated_delta"]
    init: Literal["checkpoint", "independent"]
    # Segmentation that the computation needs (after passes; "none" when nothing is cached
    # and nothing is reset).
    segments: Literal["constant", "logarithmic", "explicit", "none"]
    segment_length: int | None  # constant, logarithmic
    boundaries: tuple[int, ...] | None  # explicit
    # Aggregation after canonicalisation: soup never appears here for a matrix memory.
    aggregation: Literal["none", "residual", "grm", "ssc"]
    connector: Literal["separate", "query"] | None  # gated aggregations only
    pool: Literal["mean", "sum"] | None  # gated aggregations only
    top_k: int | None  # ssc only
    gate_scale: float | None  # gated aggregations only
    chunk_size: int
    # Which inputs the computation reads.
    uses_g: bool
    uses_beta: bool
    uses_u: bool
    # Human-readable notes of what the passes rewrote, in order.
    notes: tuple[str, ...] = field(default=())

    @property
    def caches(self) -> bool:
        """Whether segment-end states are kept and read."""
        return self.aggregation != "none"


def plan_from_ir(graph: nx.DiGraph) -> Plan:
    """Read the plan off a canonical graph (after the passes).

    Raises `IRError` for a graph the templates cannot render, such as one that still holds
    `soup` (run the passes first).
    """
    spec = graph.graph.get("spec")
    if not isinstance(spec, Spec):
        raise IRError("graph.graph['spec'] is missing: was this graph made by lower()?")
    scan = _one(graph, "recurrence_scan")
    seg = _one(graph, "segmentation")
    agg = _one(graph, "aggregate")
    gate = _maybe_one(graph, "gate")
    pool = _maybe_one(graph, "descriptor_pool")
    if agg["kind"] not in ("none", "residual", "grm", "ssc"):
        raise IRError(
            f"aggregation {agg['kind']!r} has no plan: run the passes (soup becomes grm) first"
        )
    boundaries = seg.get("boundaries")
    return Plan(
        recurrence=scan["recurrence"],
        init=scan["init"],
        segments=seg["kind"],
        segment_length=seg.get("length"),
        boundaries=tuple(boundaries) if boundaries is not None else None,
        aggregation=agg["kind"],
        connector=gate["connector"] if gate else None,
        pool=pool["pool"] if pool else None,
        top_k=gate.get("top_k") if gate else None,
        gate_scale=gate["gate_scale"] if gate else None,
        chunk_size=spec.compute.chunk_size,
        uses_g=scan["recurrence"] in DECAY_RECURRENCES,
        uses_beta=scan["recurrence"] in DELTA_RECURRENCES,
        # connector `query` reads q for the gate, so no u input is needed.
        uses_u=gate is not None and gate["connector"] == "separate",
        notes=tuple(graph.graph.get("notes", [])),
    )


def _one(graph: nx.DiGraph, op: str) -> dict[str, Any]:
    found = _maybe_one(graph, op)
    if found is None:
        raise IRError(f"a plan needs exactly one {op} node, found none")
    return found


def _maybe_one(graph: nx.DiGraph, op: str) -> dict[str, Any] | None:
    found = [attrs for _, attrs in graph.nodes(data=True) if attrs.get("op") == op]
    if len(found) > 1:
        raise IRError(f"a plan needs at most one {op} node, found {len(found)}")
    return found[0] if found else None
