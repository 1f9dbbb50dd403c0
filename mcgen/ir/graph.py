"""Lowering: a validated Spec becomes the graph IR (a networkx DiGraph of typed ops).

Each node has an `op` attribute (input, segmentation, recurrence_scan, read, segment_cache,
descriptor_pool, gate, aggregate, output) and the attributes that op needs. Each edge is a
data flow and carries `arg`, the input slot it fills on its target (a scan reads `k`, `v`,
`segments`, ...), so passes and validation can ask "which node feeds this slot" without
relying on node names.

Lowering is faithful: it writes down what the spec says, `soup` and all. Simplifications
are the passes' job, and each one says what it rewrote in `graph.graph["notes"]`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import networkx as nx

from mcgen.spec.schema import DECAY_RECURRENCES, DELTA_RECURRENCES, GATED_AGGREGATIONS, Spec

# The node ids lowering uses; passes look nodes up by these ids.
INPUT_NODES = ("q", "k", "v", "u", "g", "beta")
CACHE_NODES = ("cache", "pool", "gate", "read_cached")

# Nominal activation dtype: the cost model counts inputs and outputs at this width.
ACTIVATION_DTYPE = "bf16"
STATE_DTYPE = "fp32"


def lower(spec: Spec) -> nx.DiGraph:
    """Lower a (resolved) spec to the graph IR, one node per op the spec asks for."""
    heads, kdim, vdim = spec.memory.heads, spec.memory.key_dim, spec.memory.value_dim
    rec = spec.memory.recurrence
    agg = spec.aggregation
    seg = spec.cache.segments

    graph = nx.DiGraph()
    graph.graph["spec"] = spec
    graph.graph["notes"] = []
    # Every recurrence mcgen lowers today keeps a V x K matrix; deep memories (dla, titans)
    # will set "deep", and the matrix-only rewrites (soup -> grm) must then stay off.
    graph.graph["memory"] = "matrix"

    _input(graph, "q", "[B,T,H,K]", {"H": heads, "K": kdim})
    _input(graph, "k", "[B,T,H,K]", {"H": heads, "K": kdim})
    _input(graph, "v", "[B,T,H,V]", {"H": heads, "V": vdim})
    gated = agg.kind in GATED_AGGREGATIONS
    if gated and agg.connector == "separate":
        _input(graph, "u", "[B,T,H,K]", {"H": heads, "K": kdim})
    if rec in DECAY_RECURRENCES:
        _input(graph, "g", "[B,T,H]", {"H": heads})
    if rec in DELTA_RECURRENCES:
        _input(graph, "beta", "[B,T,H]", {"H": heads})

    graph.add_node(
        "segments",
        op="segmentation",
        kind=seg.kind,
        length=seg.length,
        boundaries=tuple(seg.boundaries) if seg.boundaries is not None else None,
    )
    graph.add_node(
        "scan",
        op="recurrence_scan",
        recurrence=rec,
        init=spec.cache.init,
        state_shape="[V,K]",
        state_dims={"V": vdim, "K": kdim},
        state_dtype=STATE_DTYPE,
        chunk_size=spec.compute.chunk_size,
    )
    _flow(graph, "k", "scan", "k")
    _flow(graph, "v", "scan", "v")
    if rec in DECAY_RECURRENCES:
        _flow(graph, "g", "scan", "g")
    if rec in DELTA_RECURRENCES:
        _flow(graph, "beta", "scan", "beta")
    # The scan always sees the segmentation: with `independent` it resets there.
    _flow(graph, "segments", "scan", "segments")

    graph.add_node("read_online", op="read", source="online", form="state")
    _flow(graph, "scan", "read_online", "state")
    _flow(graph, "q", "read_online", "q")

    graph.add_node("aggregate", op="aggregate", kind=agg.kind)
    _flow(graph, "read_online", "aggregate", "online")

    if agg.kind != "none":
        graph.add_node(
            "cache",
            op="segment_cache",
            state_shape="[V,K]",
            state_dims={"V": vdim, "K": kdim},
            state_dtype=STATE_DTYPE,
        )
        _flow(graph, "scan", "cache", "states")
        _flow(graph, "segments", "cache", "segments")
        graph.add_node("read_cached", op="read", source="cache", form="state")
        _flow(graph, "cache", "read_cached", "cache")
        _flow(graph, "q", "read_cached", "q")
        _flow(graph, "read_cached", "aggregate", "cached")

    if gated:
        graph.add_node("pool", op="descriptor_pool", pool=agg.pool, dims={"K": kdim})
        _flow(graph, "k", "pool", "k")
        _flow(graph, "segments", "pool", "segments")
        graph.add_node(
            "gate",
            op="gate",
            kind="topk_softmax" if agg.kind == "ssc" else "softmax",
            top_k=agg.top_k if agg.kind == "ssc" else None,
            gate_scale=agg.gate_scale,
            connector=agg.connector,
        )
        _flow(graph, "pool", "gate", "descriptors")
        # connector `query`: the gate reads q itself (u = q, unscaled); no u input exists.
        _flow(graph, "u" if agg.connector == "separate" else "q", "gate", "u")
        _flow(graph, "gate", "aggregate", "weights")

    graph.add_node(
        "out", op="output", shape="[B,T,H,V]", dims={"H": heads, "V": vdim}, dtype=ACTIVATION_DTYPE
    )
    _flow(graph, "aggregate", "out", "o")
    return graph


def clone(graph: nx.DiGraph) -> nx.DiGraph:
    """A deep copy: passes rewrite the copy so their input graph stays as it was."""
    return copy.deepcopy(graph)


def inputs_of(graph: nx.DiGraph, node: str) -> dict[str, str]:
    """The slots of `node` and the node feeding each: {arg: source node}."""
    return {data["arg"]: src for src, _, data in graph.in_edges(node, data=True)}


def note(graph: nx.DiGraph, text: str) -> None:
    graph.graph.setdefault("notes", []).append(text)


def remove_nodes(graph: nx.DiGraph, nodes: Iterable[str]) -> list[str]:
    """Remove those of `nodes` that exist; returns the ones removed, in the order given."""
    removed = [n for n in nodes if n in graph]
    graph.remove_nodes_from(removed)
    return removed


def prune_unused_inputs(graph: nx.DiGraph) -> list[str]:
    """Remove input nodes nothing reads any more (u, once its gate is gone)."""
    unused = [n for n, op in graph.nodes(data="op") if op == "input" and graph.out_degree(n) == 0]
    graph.remove_nodes_from(unused)
    return unused


def spec_of(graph: nx.DiGraph) -> Spec:
    spec = graph.graph.get("spec")
    if not isinstance(spec, Spec):
        raise TypeError("graph.graph['spec'] is not a Spec: was this graph made by lower()?")
    return spec


def _input(graph: nx.DiGraph, name: str, shape: str, dims: dict[str, int]) -> None:
    graph.add_node(name, op="input", name=name, shape=shape, dims=dims, dtype=ACTIVATION_DTYPE)


def _flow(graph: nx.DiGraph, src: str, dst: str, arg: str, **attrs: Any) -> None:
    graph.add_edge(src, dst, arg=arg, **attrs)
