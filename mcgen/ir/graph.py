"""Lowering: a validated Spec becomes the graph IR (a networkx DiGraph of typed ops).

Each node keeps its op record (mcgen/ir/ops.py: Input, Segmentation, Scan, Read,
SegmentCache, DescriptorPool, Gate, Aggregate, Output) under its `op` attribute. Each edge
is a data flow and carries `arg`, the input slot it fills on its target (a scan reads `k`,
`v`, `segments`, ...), so passes and validation can ask "which node feeds this slot" without
relying on node names. Everything the plan needs is in the records; the spec stays attached
(`graph.graph["spec"]`) for the reference and for tools, never for the plan.

Lowering is faithful: it writes down what the spec says, `soup` and all. Simplifications
are the passes' job, and each one says what it rewrote in `graph.graph["notes"]`.

`graph.graph["memory"]` says what a state is: "matrix" (a V x K matrix per head: linear,
decay, delta, gated_delta) or "deep" (the weights of an MLP per head: dla, titans,
docs/method.md section 6). A deep scan reads its initial weights as the op input `weights`
([H,P], P weights per head) and its data-dependent rates as op inputs: `beta` (the inner
learning rate theta_t), `eta` (titans' momentum) and `g` (titans' decay, log(1 - alpha_t)).
For `soup` on a deep memory the reads hand their weights to the aggregate (form `weights`),
which mixes them with the gate weights and reads the mixture once at q.
"""

from __future__ import annotations

from typing import Any

import networkx as nx

from mcgen.components.registry import AGGREGATIONS, RECURRENCES, rate_input_names
from mcgen.ir.ops import (
    Aggregate,
    DescriptorPool,
    Gate,
    Input,
    Output,
    Read,
    Scan,
    Segmentation,
    SegmentCache,
    nodes_of,
)
from mcgen.spec.schema import Spec

# Nominal activation dtype: the cost model counts inputs and outputs at this width.
ACTIVATION_DTYPE = "bf16"
STATE_DTYPE = "fp32"


def lower(spec: Spec) -> nx.DiGraph:
    """Lower a (resolved) spec to the graph IR, one node per op the spec asks for."""
    heads, kdim, vdim = spec.memory.heads, spec.memory.key_dim, spec.memory.value_dim
    recurrence = RECURRENCES.of(spec)
    aggregation = AGGREGATIONS.of(spec)
    agg = spec.aggregation
    seg = spec.cache.segments

    params = recurrence.params(spec)
    state_shape = recurrence.state_shape(spec)
    scan = Scan(
        recurrence=recurrence.name,
        init=spec.cache.init,
        state_shape=state_shape,
        state_dims={"V": vdim, "K": kdim},
        state_dtype=STATE_DTYPE,
        params=params,
        chunk_size=spec.compute.chunk_size,
        **recurrence.scan_attributes(spec),
    )
    deep = recurrence.memory == "deep"
    # Rate inputs the scan reads besides k and v: g and beta for the matrix recurrences that
    # name them; for a deep memory, one per rate that is "data".
    rates = set(recurrence.rate_inputs(scan))
    # soup on a deep memory mixes weights, not reads: the reads hand the weights over.
    mixes_weights = deep and aggregation.mixes_weights

    graph = nx.DiGraph()
    graph.graph["spec"] = spec
    graph.graph["name"] = spec.name  # the DOT graph's name
    graph.graph["notes"] = []
    # A matrix memory keeps a V x K matrix per head; a deep one the weights of an MLP, where
    # the matrix-only rewrites (soup -> grm) must stay off.
    graph.graph["memory"] = recurrence.memory

    _input(graph, "q", "[B,T,H,K]", {"H": heads, "K": kdim})
    _input(graph, "k", "[B,T,H,K]", {"H": heads, "K": kdim})
    _input(graph, "v", "[B,T,H,V]", {"H": heads, "V": vdim})
    if aggregation.gated and agg.connector == "separate":
        _input(graph, "u", "[B,T,H,K]", {"H": heads, "K": kdim})
    if params is not None:
        # The initial MLP weights per head (flattened), where every sequence starts (and,
        # with init independent, every segment).
        _input(graph, "weights", "[H,P]", {"H": heads, "P": params}, dtype=STATE_DTYPE)
    for name in rate_input_names():  # the op's signature order
        if name in rates:
            _input(graph, name, "[B,T,H]", {"H": heads})

    graph.add_node(
        "segments",
        op=Segmentation(
            kind=seg.kind,
            length=seg.length,
            boundaries=tuple(seg.boundaries) if seg.boundaries is not None else None,
        ),
    )
    graph.add_node("scan", op=scan)
    _flow(graph, "k", "scan", "k")
    _flow(graph, "v", "scan", "v")
    if params is not None:
        _flow(graph, "weights", "scan", "weights")
    for name in rate_input_names():
        if name in rates:
            _flow(graph, name, "scan", name)
    # The scan always sees the segmentation: with `independent` it resets there.
    _flow(graph, "segments", "scan", "segments")

    form = "weights" if mixes_weights else "state"
    graph.add_node("read_online", op=Read(source="online", form=form))
    _flow(graph, "scan", "read_online", "state")
    if not mixes_weights:
        _flow(graph, "q", "read_online", "q")

    graph.add_node("aggregate", op=Aggregate(kind=agg.kind))
    _flow(graph, "read_online", "aggregate", "online")
    if mixes_weights:
        _flow(graph, "q", "aggregate", "q")  # the one read of the mixed weights

    if aggregation.reads_cache:
        cache = SegmentCache(
            state_shape=state_shape,
            state_dims={"V": vdim, "K": kdim},
            state_dtype=STATE_DTYPE,
            params=params,
        )
        graph.add_node("cache", op=cache)
        _flow(graph, "scan", "cache", "states")
        _flow(graph, "segments", "cache", "segments")
        read = Read(source="cache", form=form, requested_form=spec.compute.read_form)
        graph.add_node("read_cached", op=read)
        _flow(graph, "cache", "read_cached", "cache")
        if not mixes_weights:
            _flow(graph, "q", "read_cached", "q")
        _flow(graph, "read_cached", "aggregate", "cached")

    if aggregation.gated:
        graph.add_node("pool", op=DescriptorPool(pool=agg.pool, dims={"K": kdim}))
        _flow(graph, "k", "pool", "k")
        _flow(graph, "segments", "pool", "segments")
        gate = Gate(
            kind=aggregation.gate,
            top_k=agg.top_k if aggregation.selects_top_k else None,
            gate_scale=agg.gate_scale,
            connector=agg.connector,
        )
        graph.add_node("gate", op=gate)
        _flow(graph, "pool", "gate", "descriptors")
        # connector `query`: the gate reads q itself (u = q, unscaled); no u input exists.
        _flow(graph, "u" if agg.connector == "separate" else "q", "gate", "u")
        _flow(graph, "gate", "aggregate", "weights")

    output = Output(shape="[B,T,H,V]", dims={"H": heads, "V": vdim}, dtype=ACTIVATION_DTYPE)
    graph.add_node("out", op=output)
    _flow(graph, "aggregate", "out", "o")
    return graph


def clone(graph: nx.DiGraph) -> nx.DiGraph:
    """A copy for a pass to rewrite, leaving its input graph as it was: new nodes, edges,
    attribute dicts and notes list. The op records and the spec are shared, not copied:
    both are frozen, and a pass replaces a record (ops.rewrite), never edits it."""
    out = graph.copy()
    out.graph["notes"] = list(graph.graph.get("notes", []))
    return out


def inputs_of(graph: nx.DiGraph, node: str) -> dict[str, str]:
    """The slots of `node` and the node feeding each: {arg: source node}."""
    return {data["arg"]: src for src, _, data in graph.in_edges(node, data=True)}


def note(graph: nx.DiGraph, text: str) -> None:
    graph.graph.setdefault("notes", []).append(text)


def remove_cache(graph: nx.DiGraph) -> list[str]:
    """Remove what only the cached reads need: the segment cache, descriptor pool, gate and
    cached read. Returns the nodes removed, in that order."""
    removed = [n for kind in (SegmentCache, DescriptorPool, Gate) for n, _ in nodes_of(graph, kind)]
    removed += [n for n, read in nodes_of(graph, Read) if read.source == "cache"]
    graph.remove_nodes_from(removed)
    return removed


def prune_unused_inputs(graph: nx.DiGraph) -> list[str]:
    """Remove input nodes nothing reads any more (u, once its gate is gone)."""
    unused = [n for n, _ in nodes_of(graph, Input) if graph.out_degree(n) == 0]
    graph.remove_nodes_from(unused)
    return unused


def _input(
    graph: nx.DiGraph, name: str, shape: str, dims: dict[str, int], dtype: str = ACTIVATION_DTYPE
) -> None:
    graph.add_node(name, op=Input(name=name, shape=shape, dims=dims, dtype=dtype))


def _flow(graph: nx.DiGraph, src: str, dst: str, arg: str, **attrs: Any) -> None:
    graph.add_edge(src, dst, arg=arg, **attrs)
