"""Validation: the invariants every graph IR must hold, before and after the rewrites.

A rewrite that leaves, say, a gate without descriptors would otherwise surface as a
confusing failure deep in codegen; here it is an `IRError` naming the node.
"""

from __future__ import annotations

from itertools import pairwise

import networkx as nx

from mcgen.ir.errors import IRError
from mcgen.ir.graph import clone, inputs_of
from mcgen.spec.schema import DECAY_RECURRENCES, DELTA_RECURRENCES

RECURRENCES = ("linear", "decay", "delta", "gated_delta")
INITS = ("checkpoint", "independent")
SEGMENT_KINDS = ("constant", "logarithmic", "explicit", "none")
AGGREGATIONS = ("none", "residual", "grm", "soup", "ssc")
GATE_KINDS = ("softmax", "topk_softmax")

# The op that must feed each slot.
SOURCE_OP = {
    "q": "input",
    "k": "input",
    "v": "input",
    "u": "input",
    "g": "input",
    "beta": "input",
    "segments": "segmentation",
    "state": "recurrence_scan",
    "states": "recurrence_scan",
    "cache": "segment_cache",
    "descriptors": "descriptor_pool",
    "weights": "gate",
    "online": "read",
    "cached": "read",
    "o": "aggregate",
}


def validate_ir(graph: nx.DiGraph) -> nx.DiGraph:
    """Check `graph`; return a copy of it unchanged, or raise `IRError`."""
    if not nx.is_directed_acyclic_graph(graph):
        cycle = " -> ".join(str(src) for src, _ in nx.find_cycle(graph))
        raise IRError(f"the graph has a cycle ({cycle}); data flow must be acyclic")
    if graph.graph.get("memory") != "matrix":
        raise IRError(f"graph memory is {graph.graph.get('memory')!r}; only 'matrix' is supported")

    scans = [n for n, op in graph.nodes(data="op") if op == "recurrence_scan"]
    outputs = [n for n, op in graph.nodes(data="op") if op == "output"]
    if len(scans) != 1:
        raise IRError(f"expected exactly one recurrence_scan node, found {len(scans)}")
    if len(outputs) != 1:
        raise IRError(f"expected exactly one output node, found {len(outputs)}")

    for node in graph.nodes:
        _check_node(graph, node)
    _check_dims(graph, scans[0], outputs[0])
    return clone(graph)


def _check_node(graph: nx.DiGraph, node: str) -> None:
    attrs = graph.nodes[node]
    op = attrs.get("op")
    slots = inputs_of(graph, node)
    for arg, src in slots.items():
        want = SOURCE_OP.get(arg)
        if want is None:
            raise IRError(f"node {node!r}: unknown input slot {arg!r} (from {src!r})")
        got = graph.nodes[src].get("op")
        if got != want:
            raise IRError(f"node {node!r}: slot {arg!r} must come from a {want} op, not {got!r}")
        if want == "input" and arg != "u" and graph.nodes[src].get("name") != arg:
            raise IRError(
                f"node {node!r}: slot {arg!r} is fed by input {graph.nodes[src].get('name')!r}"
            )

    if op == "input":
        _expect(node, slots, set())
        for key in ("name", "shape", "dims", "dtype"):
            if key not in attrs:
                raise IRError(f"input {node!r} lacks attribute {key!r}")
    elif op == "segmentation":
        _expect(node, slots, set())
        _check_segmentation(node, attrs)
    elif op == "recurrence_scan":
        rec, init = attrs.get("recurrence"), attrs.get("init")
        if rec not in RECURRENCES:
            raise IRError(f"scan {node!r}: unknown recurrence {rec!r}")
        if init not in INITS:
            raise IRError(f"scan {node!r}: unknown init {init!r}")
        need = {"k", "v", "segments"}
        if rec in DECAY_RECURRENCES:
            need.add("g")
        if rec in DELTA_RECURRENCES:
            need.add("beta")
        _expect(node, slots, need, why=f"a {rec} scan")
    elif op == "read":
        source = attrs.get("source")
        if source == "online":
            _expect(node, slots, {"state", "q"}, why="an online read")
        elif source == "cache":
            _expect(node, slots, {"cache", "q"}, why="a cached read")
        else:
            raise IRError(f"read {node!r}: source must be 'online' or 'cache', got {source!r}")
    elif op == "segment_cache":
        _expect(node, slots, {"states", "segments"}, why="a segment cache")
    elif op == "descriptor_pool":
        if attrs.get("pool") not in ("mean", "sum"):
            raise IRError(f"pool {node!r}: pool must be 'mean' or 'sum', got {attrs.get('pool')!r}")
        _expect(node, slots, {"k", "segments"}, why="a descriptor pool")
    elif op == "gate":
        _expect(node, slots, {"descriptors", "u"}, why="a gate")
        _check_gate(graph, node, attrs, slots)
    elif op == "aggregate":
        kind = attrs.get("kind")
        if kind not in AGGREGATIONS:
            raise IRError(f"aggregate {node!r}: unknown kind {kind!r}")
        need = {"online"}
        if kind != "none":
            need.add("cached")
        if kind in ("grm", "soup", "ssc"):
            need.add("weights")
        _expect(node, slots, need, why=f"aggregation {kind}")
        if "weights" in slots:
            gate_kind = graph.nodes[slots["weights"]].get("kind")
            want = "topk_softmax" if kind == "ssc" else "softmax"
            if gate_kind != want:
                raise IRError(
                    f"aggregate {node!r}: aggregation {kind} needs a {want} gate, "
                    f"but {slots['weights']!r} is {gate_kind!r}"
                )
    elif op == "output":
        _expect(node, slots, {"o"}, why="an output")
    else:
        raise IRError(f"node {node!r}: unknown op {op!r}")


def _expect(node: str, slots: dict[str, str], need: set[str], why: str = "") -> None:
    what = f" ({why})" if why else ""
    missing = sorted(need - slots.keys())
    if missing:
        raise IRError(f"node {node!r}{what} lacks required input(s): {', '.join(missing)}")
    extra = sorted(slots.keys() - need)
    if extra:
        raise IRError(f"node {node!r}{what} has input(s) it does not use: {', '.join(extra)}")


def _check_segmentation(node: str, attrs: dict) -> None:
    kind, length, bounds = attrs.get("kind"), attrs.get("length"), attrs.get("boundaries")
    if kind not in SEGMENT_KINDS:
        raise IRError(f"segmentation {node!r}: unknown kind {kind!r}")
    if kind in ("constant", "logarithmic"):
        if not isinstance(length, int) or length < 1:
            raise IRError(f"segmentation {node!r}: kind {kind} needs a positive length")
        if bounds is not None:
            raise IRError(f"segmentation {node!r}: kind {kind} takes no boundaries")
    elif kind == "explicit":
        if not bounds or any(b <= a for a, b in pairwise(bounds)) or bounds[0] < 1:
            raise IRError(
                f"segmentation {node!r}: explicit boundaries must be a non-empty, strictly "
                f"increasing list of positive positions, got {bounds!r}"
            )
        if length is not None:
            raise IRError(f"segmentation {node!r}: kind explicit takes no length")
    elif length is not None or bounds is not None:
        raise IRError(f"segmentation {node!r}: kind none takes no length or boundaries")


def _check_gate(graph: nx.DiGraph, node: str, attrs: dict, slots: dict[str, str]) -> None:
    kind, top_k = attrs.get("kind"), attrs.get("top_k")
    if kind not in GATE_KINDS:
        raise IRError(f"gate {node!r}: unknown kind {kind!r}")
    if kind == "softmax" and top_k is not None:
        raise IRError(f"gate {node!r}: top_k={top_k} given on a {kind} gate (topk_softmax only)")
    if kind == "topk_softmax" and (not isinstance(top_k, int) or top_k < 1):
        raise IRError(f"gate {node!r}: a topk_softmax gate needs top_k >= 1, got {top_k!r}")
    scale = attrs.get("gate_scale")
    if not isinstance(scale, (int, float)) or scale <= 0:
        raise IRError(f"gate {node!r}: gate_scale must be a positive number, got {scale!r}")
    connector = attrs.get("connector")
    feeder = graph.nodes[slots["u"]].get("name")
    want = {"separate": "u", "query": "q"}.get(connector)
    if want is None:
        raise IRError(f"gate {node!r}: connector must be 'separate' or 'query', got {connector!r}")
    if feeder != want:
        raise IRError(
            f"gate {node!r}: connector {connector} reads input {want!r}, but it is fed {feeder!r}"
        )


def _check_dims(graph: nx.DiGraph, scan: str, out: str) -> None:
    state = graph.nodes[scan].get("state_dims") or {}
    kdim, vdim = state.get("K"), state.get("V")
    if not isinstance(kdim, int) or not isinstance(vdim, int):
        raise IRError(f"scan {scan!r}: state_dims must give integer K and V, got {state!r}")
    heads: set[int] = set()
    for node, attrs in graph.nodes(data=True):
        dims = attrs.get("dims") if attrs.get("op") in ("input", "output") else None
        if dims is None:
            continue
        heads.add(dims.get("H"))
        for axis, size in (("K", kdim), ("V", vdim)):
            if axis in dims and dims[axis] != size:
                raise IRError(
                    f"node {node!r}: {axis}={dims[axis]} does not match the state's {axis}={size}"
                )
    if len(heads) > 1:
        raise IRError(f"inputs and output disagree on the number of heads: {sorted(heads)}")
    cache = [n for n, op in graph.nodes(data="op") if op == "segment_cache"]
    for node in cache:
        if graph.nodes[node].get("state_dims") != state:
            raise IRError(f"cache {node!r}: state dims differ from the scan's {state!r}")
    pools = [n for n, op in graph.nodes(data="op") if op == "descriptor_pool"]
    for node in pools:
        if (graph.nodes[node].get("dims") or {}).get("K") != kdim:
            raise IRError(f"pool {node!r}: descriptor K differs from the state's K={kdim}")
