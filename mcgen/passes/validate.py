"""Validation: the invariants every graph IR must hold, before and after the rewrites.

A rewrite that leaves, say, a gate without descriptors would otherwise surface as a
confusing failure deep in codegen; here it is an `IRError` naming the node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import networkx as nx

from mcgen.components.base import MEMORY_KINDS
from mcgen.components.registry import (
    AGGREGATIONS,
    RECURRENCES,
    SEGMENTATIONS,
    rate_input_names,
)
from mcgen.ir.errors import IRError
from mcgen.ir.graph import clone, inputs_of
from mcgen.ir.ops import (
    Aggregate,
    DescriptorPool,
    Gate,
    Input,
    Op,
    Output,
    Read,
    Scan,
    Segmentation,
    SegmentCache,
    nodes_of,
    op_of,
)

READ_FORMS = ("state", "weights")
INITS = ("checkpoint", "independent")
GATE_KINDS = ("softmax", "topk_softmax")
POOLS = ("mean", "sum")

# The op that must feed each slot.
SOURCE_OP: dict[str, type[Op]] = {
    "q": Input,
    "k": Input,
    "v": Input,
    "u": Input,
    **dict.fromkeys(rate_input_names(), Input),  # g, beta, ...: a recurrence's rates
    "segments": Segmentation,
    "state": Scan,
    "states": Scan,
    "cache": SegmentCache,
    "descriptors": DescriptorPool,
    "weights": Gate,
    "online": Read,
    "cached": Read,
    "o": Aggregate,
}
# Slots whose source depends on the op: a deep scan's `weights` are its initial MLP weights
# (an op input), an aggregate's are the gate's.
SOURCE_OP_OF: dict[tuple[type[Op], str], type[Op]] = {(Scan, "weights"): Input}


def validate_ir(graph: nx.DiGraph) -> nx.DiGraph:
    """Check `graph`; return a copy of it unchanged, or raise `IRError`."""
    if not nx.is_directed_acyclic_graph(graph):
        cycle = " -> ".join(str(src) for src, _ in nx.find_cycle(graph))
        raise IRError(f"the graph has a cycle ({cycle}); data flow must be acyclic")
    memory = graph.graph.get("memory")
    if memory not in MEMORY_KINDS:
        raise IRError(f"graph memory is {memory!r}; it must be one of {', '.join(MEMORY_KINDS)}")

    for node in graph.nodes:
        if op_of(graph, node) is None:
            got = graph.nodes[node].get("op")
            raise IRError(f"node {node!r}: its op must be an op record, got {got!r}")
    scans = [n for n, _ in nodes_of(graph, Scan)]
    outputs = [n for n, _ in nodes_of(graph, Output)]
    if len(scans) != 1:
        raise IRError(f"expected exactly one recurrence_scan node, found {len(scans)}")
    if len(outputs) != 1:
        raise IRError(f"expected exactly one output node, found {len(outputs)}")

    rec = graph.nodes[scans[0]]["op"].recurrence
    recurrence = RECURRENCES.find(rec)
    if recurrence is not None and recurrence.memory != memory:
        raise IRError(
            f"graph memory is {memory!r} but scan {scans[0]!r} runs recurrence {rec!r}, "
            f"whose memory is {recurrence.memory}"
        )

    for node in graph.nodes:
        _check_node(graph, node)
    _check_dims(graph, scans[0], outputs[0])
    return clone(graph)


Slots = dict[str, str]  # a node's input slots: {arg: the node feeding it}


def _check_node(graph: nx.DiGraph, node: str) -> None:
    """The node's slots come from the right ops; then its op's own check (OP_CHECKS)."""
    op = graph.nodes[node]["op"]
    slots = inputs_of(graph, node)
    _check_sources(graph, node, op, slots)
    check = OP_CHECKS.get(type(op))
    if check is None:
        raise IRError(f"node {node!r}: unknown op {type(op).__name__}")
    check(graph, node, op, slots)


def _check_sources(graph: nx.DiGraph, node: str, op: Op, slots: Slots) -> None:
    for arg, src in slots.items():
        want = SOURCE_OP_OF.get((type(op), arg), SOURCE_OP.get(arg))
        if want is None:
            raise IRError(f"node {node!r}: unknown input slot {arg!r} (from {src!r})")
        got = graph.nodes[src]["op"]
        if not isinstance(got, want):
            raise IRError(
                f"node {node!r}: slot {arg!r} must come from a {want.kind_name} op, "
                f"not {got.kind_name!r}"
            )
        if isinstance(got, Input) and arg != "u" and got.name != arg:
            raise IRError(f"node {node!r}: slot {arg!r} is fed by input {got.name!r}")


def _check_input(graph: nx.DiGraph, node: str, op: Input, slots: Slots) -> None:
    _expect(node, slots, set())


def _check_segmentation(graph: nx.DiGraph, node: str, op: Segmentation, slots: Slots) -> None:
    _expect(node, slots, set())
    segmentation = SEGMENTATIONS.find(op.kind)
    if segmentation is None:
        raise IRError(f"segmentation {node!r}: unknown kind {op.kind!r}")
    segmentation.check_node(node, op)


def _check_scan(graph: nx.DiGraph, node: str, op: Scan, slots: Slots) -> None:
    rec, init = op.recurrence, op.init
    recurrence = RECURRENCES.find(rec)
    if recurrence is None:
        raise IRError(f"scan {node!r}: unknown recurrence {rec!r}")
    if init not in INITS:
        raise IRError(f"scan {node!r}: unknown init {init!r}")
    recurrence.check_scan(node, op)
    need = {"k", "v", "segments"} | recurrence.scan_slots(op)
    _expect(node, slots, need, why=f"a {rec} scan")


def _check_read(graph: nx.DiGraph, node: str, op: Read, slots: Slots) -> None:
    source, form = op.source, op.form
    if form not in READ_FORMS:
        raise IRError(f"read {node!r}: form must be 'state' or 'weights', got {form!r}")
    if form == "weights" and graph.graph.get("memory") != "deep":
        raise IRError(f"read {node!r}: form weights (for soup) needs a deep memory")
    # form weights hands the memory's weights to a soup aggregate, which reads q itself.
    query = {"q"} if form == "state" else set()
    if source == "online":
        _expect(node, slots, {"state"} | query, why=f"an online read of form {form}")
    elif source == "cache":
        _expect(node, slots, {"cache"} | query, why=f"a cached read of form {form}")
    else:
        raise IRError(f"read {node!r}: source must be 'online' or 'cache', got {source!r}")


def _check_pool(graph: nx.DiGraph, node: str, op: DescriptorPool, slots: Slots) -> None:
    if op.pool not in POOLS:
        raise IRError(f"pool {node!r}: pool must be 'mean' or 'sum', got {op.pool!r}")
    _expect(node, slots, {"k", "segments"}, why="a descriptor pool")


def _check_aggregate(graph: nx.DiGraph, node: str, op: Aggregate, slots: Slots) -> None:
    kind = op.kind
    aggregation = AGGREGATIONS.find(kind)
    if aggregation is None:
        raise IRError(f"aggregate {node!r}: unknown kind {kind!r}")
    # soup on a deep memory mixes the weights of every memory, then reads them at q.
    mixes = aggregation.mixes_weights and graph.graph.get("memory") == "deep"
    need = {"online"}
    if aggregation.reads_cache:
        need.add("cached")
    if aggregation.gated:
        need.add("weights")
    if mixes:
        need.add("q")
    why = f"aggregation {kind}" + (" of a deep memory" if mixes else "")
    _expect(node, slots, need, why=why)
    form = "weights" if mixes else "state"
    for arg in ("online", "cached"):
        got = graph.nodes[slots[arg]]["op"].form if arg in slots else form
        if got != form:
            raise IRError(
                f"aggregate {node!r}: {why} needs reads of form {form}, "
                f"but {slots[arg]!r} is of form {got!r}"
            )
    if "weights" in slots:
        gate_kind = graph.nodes[slots["weights"]]["op"].kind
        if gate_kind != aggregation.gate:
            raise IRError(
                f"aggregate {node!r}: aggregation {kind} needs a {aggregation.gate} gate, "
                f"but {slots['weights']!r} is {gate_kind!r}"
            )


def _slots_only(need: set[str], why: str) -> Callable[[nx.DiGraph, str, Op, Slots], None]:
    """The check of an op whose only rule is which slots it takes."""

    def check(graph: nx.DiGraph, node: str, op: Op, slots: Slots) -> None:
        _expect(node, slots, need, why=why)

    return check


def _expect(node: str, slots: dict[str, str], need: set[str], why: str = "") -> None:
    what = f" ({why})" if why else ""
    missing = sorted(need - slots.keys())
    if missing:
        raise IRError(f"node {node!r}{what} lacks required input(s): {', '.join(missing)}")
    extra = sorted(slots.keys() - need)
    if extra:
        raise IRError(f"node {node!r}{what} has input(s) it does not use: {', '.join(extra)}")


def _check_gate(graph: nx.DiGraph, node: str, op: Gate, slots: Slots) -> None:
    _expect(node, slots, {"descriptors", "u"}, why="a gate")
    kind, top_k = op.kind, op.top_k
    if kind not in GATE_KINDS:
        raise IRError(f"gate {node!r}: unknown kind {kind!r}")
    if kind == "softmax" and top_k is not None:
        raise IRError(f"gate {node!r}: top_k={top_k} given on a {kind} gate (topk_softmax only)")
    if kind == "topk_softmax" and (not isinstance(top_k, int) or top_k < 1):
        raise IRError(f"gate {node!r}: a topk_softmax gate needs top_k >= 1, got {top_k!r}")
    scale = op.gate_scale
    if not isinstance(scale, (int, float)) or scale <= 0:
        raise IRError(f"gate {node!r}: gate_scale must be a positive number, got {scale!r}")
    connector = op.connector
    feeder = graph.nodes[slots["u"]]["op"].name
    want = {"separate": "u", "query": "q"}.get(connector)
    if want is None:
        raise IRError(f"gate {node!r}: connector must be 'separate' or 'query', got {connector!r}")
    if feeder != want:
        raise IRError(
            f"gate {node!r}: connector {connector} reads input {want!r}, but it is fed {feeder!r}"
        )


# Each op's check: its slots, and the attributes it needs.
OP_CHECKS: dict[type[Op], Callable[[nx.DiGraph, str, Any, Slots], None]] = {
    Input: _check_input,
    Segmentation: _check_segmentation,
    Scan: _check_scan,
    Read: _check_read,
    SegmentCache: _slots_only({"states", "segments"}, "a segment cache"),
    DescriptorPool: _check_pool,
    Gate: _check_gate,
    Aggregate: _check_aggregate,
    Output: _slots_only({"o"}, "an output"),
}


def _check_dims(graph: nx.DiGraph, scan_node: str, out: str) -> None:
    scan: Scan = graph.nodes[scan_node]["op"]
    state = scan.state_dims or {}
    kdim, vdim = state.get("K"), state.get("V")
    if not isinstance(kdim, int) or not isinstance(vdim, int):
        raise IRError(f"scan {scan_node!r}: state_dims must give integer K and V, got {state!r}")
    heads: set[int] = set()
    ends = [*nodes_of(graph, Input), *nodes_of(graph, Output)]
    for node, op in ends:
        heads.add(op.dims.get("H"))
        for axis, size in (("K", kdim), ("V", vdim)):
            if axis in op.dims and op.dims[axis] != size:
                raise IRError(
                    f"node {node!r}: {axis}={op.dims[axis]} does not match the state's "
                    f"{axis}={size}"
                )
    if len(heads) > 1:
        raise IRError(f"inputs and output disagree on the number of heads: {sorted(heads)}")
    params = scan.params
    for node, op in nodes_of(graph, Input):
        if "P" in op.dims and op.dims["P"] != params:
            raise IRError(
                f"node {node!r}: P={op.dims['P']} weights per head, but the scan's memory has "
                f"params={params!r}"
            )
    for node, cache in nodes_of(graph, SegmentCache):
        if cache.state_dims != state:
            raise IRError(f"cache {node!r}: state dims differ from the scan's {state!r}")
        if cache.params != params:
            raise IRError(f"cache {node!r}: params differ from the scan's {params!r}")
    for node, pool in nodes_of(graph, DescriptorPool):
        if (pool.dims or {}).get("K") != kdim:
            raise IRError(f"pool {node!r}: descriptor K differs from the state's K={kdim}")
