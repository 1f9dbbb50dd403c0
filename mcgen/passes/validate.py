"""Validation: the invariants every graph IR must hold, before and after the rewrites.

A rewrite that leaves, say, a gate without descriptors would otherwise surface as a
confusing failure deep in codegen; here it is an `IRError` naming the node.
"""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx

from mcgen.components.base import MEMORY_KINDS
from mcgen.components.registry import AGGREGATIONS, RECURRENCES, SEGMENTATIONS
from mcgen.ir.errors import IRError
from mcgen.ir.graph import clone, inputs_of

READ_FORMS = ("state", "weights")
INITS = ("checkpoint", "independent")
GATE_KINDS = ("softmax", "topk_softmax")
POOLS = ("mean", "sum")

# The op that must feed each slot.
SOURCE_OP = {
    "q": "input",
    "k": "input",
    "v": "input",
    "u": "input",
    "g": "input",
    "beta": "input",
    "eta": "input",
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
# Slots whose source depends on the op: a deep scan's `weights` are its initial MLP weights
# (an op input), an aggregate's are the gate's.
SOURCE_OP_OF = {("recurrence_scan", "weights"): "input"}


def validate_ir(graph: nx.DiGraph) -> nx.DiGraph:
    """Check `graph`; return a copy of it unchanged, or raise `IRError`."""
    if not nx.is_directed_acyclic_graph(graph):
        cycle = " -> ".join(str(src) for src, _ in nx.find_cycle(graph))
        raise IRError(f"the graph has a cycle ({cycle}); data flow must be acyclic")
    memory = graph.graph.get("memory")
    if memory not in MEMORY_KINDS:
        raise IRError(f"graph memory is {memory!r}; it must be one of {', '.join(MEMORY_KINDS)}")

    scans = [n for n, op in graph.nodes(data="op") if op == "recurrence_scan"]
    outputs = [n for n, op in graph.nodes(data="op") if op == "output"]
    if len(scans) != 1:
        raise IRError(f"expected exactly one recurrence_scan node, found {len(scans)}")
    if len(outputs) != 1:
        raise IRError(f"expected exactly one output node, found {len(outputs)}")

    rec = graph.nodes[scans[0]].get("recurrence")
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
    attrs = graph.nodes[node]
    op = attrs.get("op")
    slots = inputs_of(graph, node)
    _check_sources(graph, node, op, slots)
    check = OP_CHECKS.get(op)
    if check is None:
        raise IRError(f"node {node!r}: unknown op {op!r}")
    check(graph, node, attrs, slots)


def _check_sources(graph: nx.DiGraph, node: str, op: object, slots: Slots) -> None:
    for arg, src in slots.items():
        want = SOURCE_OP_OF.get((op, arg), SOURCE_OP.get(arg))
        if want is None:
            raise IRError(f"node {node!r}: unknown input slot {arg!r} (from {src!r})")
        got = graph.nodes[src].get("op")
        if got != want:
            raise IRError(f"node {node!r}: slot {arg!r} must come from a {want} op, not {got!r}")
        if want == "input" and arg != "u" and graph.nodes[src].get("name") != arg:
            raise IRError(
                f"node {node!r}: slot {arg!r} is fed by input {graph.nodes[src].get('name')!r}"
            )


def _check_input(graph: nx.DiGraph, node: str, attrs: dict, slots: Slots) -> None:
    _expect(node, slots, set())
    for key in ("name", "shape", "dims", "dtype"):
        if key not in attrs:
            raise IRError(f"input {node!r} lacks attribute {key!r}")


def _check_segmentation(graph: nx.DiGraph, node: str, attrs: dict, slots: Slots) -> None:
    _expect(node, slots, set())
    segmentation = SEGMENTATIONS.find(attrs.get("kind"))
    if segmentation is None:
        raise IRError(f"segmentation {node!r}: unknown kind {attrs.get('kind')!r}")
    segmentation.check_node(node, attrs)


def _check_scan(graph: nx.DiGraph, node: str, attrs: dict, slots: Slots) -> None:
    rec, init = attrs.get("recurrence"), attrs.get("init")
    recurrence = RECURRENCES.find(rec)
    if recurrence is None:
        raise IRError(f"scan {node!r}: unknown recurrence {rec!r}")
    if init not in INITS:
        raise IRError(f"scan {node!r}: unknown init {init!r}")
    recurrence.check_scan(node, attrs)
    need = {"k", "v", "segments"} | recurrence.scan_slots(attrs)
    _expect(node, slots, need, why=f"a {rec} scan")


def _check_read(graph: nx.DiGraph, node: str, attrs: dict, slots: Slots) -> None:
    source, form = attrs.get("source"), attrs.get("form")
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


def _check_pool(graph: nx.DiGraph, node: str, attrs: dict, slots: Slots) -> None:
    if attrs.get("pool") not in POOLS:
        raise IRError(f"pool {node!r}: pool must be 'mean' or 'sum', got {attrs.get('pool')!r}")
    _expect(node, slots, {"k", "segments"}, why="a descriptor pool")


def _check_aggregate(graph: nx.DiGraph, node: str, attrs: dict, slots: Slots) -> None:
    kind = attrs.get("kind")
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
        got = graph.nodes[slots[arg]].get("form") if arg in slots else form
        if got != form:
            raise IRError(
                f"aggregate {node!r}: {why} needs reads of form {form}, "
                f"but {slots[arg]!r} is of form {got!r}"
            )
    if "weights" in slots:
        gate_kind = graph.nodes[slots["weights"]].get("kind")
        if gate_kind != aggregation.gate:
            raise IRError(
                f"aggregate {node!r}: aggregation {kind} needs a {aggregation.gate} gate, "
                f"but {slots['weights']!r} is {gate_kind!r}"
            )


def _slots_only(need: set[str], why: str) -> Callable[[nx.DiGraph, str, dict, Slots], None]:
    """The check of an op whose only rule is which slots it takes."""

    def check(graph: nx.DiGraph, node: str, attrs: dict, slots: Slots) -> None:
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


def _check_gate(graph: nx.DiGraph, node: str, attrs: dict, slots: Slots) -> None:
    _expect(node, slots, {"descriptors", "u"}, why="a gate")
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


# Each op's check: its slots, and the attributes it needs.
OP_CHECKS: dict[str, Callable[[nx.DiGraph, str, dict, Slots], None]] = {
    "input": _check_input,
    "segmentation": _check_segmentation,
    "recurrence_scan": _check_scan,
    "read": _check_read,
    "segment_cache": _slots_only({"states", "segments"}, "a segment cache"),
    "descriptor_pool": _check_pool,
    "gate": _check_gate,
    "aggregate": _check_aggregate,
    "output": _slots_only({"o"}, "an output"),
}


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
    params = graph.nodes[scan].get("params")
    for node, attrs in graph.nodes(data=True):
        dims = attrs.get("dims") if attrs.get("op") == "input" else None
        if dims is not None and "P" in dims and dims["P"] != params:
            raise IRError(
                f"node {node!r}: P={dims['P']} weights per head, but the scan's memory has "
                f"params={params!r}"
            )
    cache = [n for n, op in graph.nodes(data="op") if op == "segment_cache"]
    for node in cache:
        if graph.nodes[node].get("state_dims") != state:
            raise IRError(f"cache {node!r}: state dims differ from the scan's {state!r}")
        if graph.nodes[node].get("params") != params:
            raise IRError(f"cache {node!r}: params differ from the scan's {params!r}")
    pools = [n for n, op in graph.nodes(data="op") if op == "descriptor_pool"]
    for node in pools:
        if (graph.nodes[node].get("dims") or {}).get("K") != kdim:
            raise IRError(f"pool {node!r}: descriptor K differs from the state's K={kdim}")
