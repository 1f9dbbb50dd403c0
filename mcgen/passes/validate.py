"""Validation: the invariants every graph IR must hold, before and after the rewrites.

A rewrite that leaves, say, a gate without descriptors would otherwise surface as a
confusing failure deep in codegen; here it is an `IRError` naming the node.
"""

from __future__ import annotations

import math
from itertools import pairwise

import networkx as nx

from mcgen.ir.errors import IRError
from mcgen.ir.graph import DEEP_RATE_INPUT, clone, deep_params, inputs_of
from mcgen.spec.schema import DECAY_RECURRENCES, DEEP_RECURRENCES, DELTA_RECURRENCES

MATRIX_RECURRENCES = ("linear", "decay", "delta", "gated_delta")
RECURRENCES = (*MATRIX_RECURRENCES, "dla", "titans")
MEMORIES = ("matrix", "deep")
ACTIVATIONS = ("gelu", "silu", "relu", "tanh")
READ_FORMS = ("state", "weights")
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
    if memory not in MEMORIES:
        raise IRError(f"graph memory is {memory!r}; it must be one of {', '.join(MEMORIES)}")

    scans = [n for n, op in graph.nodes(data="op") if op == "recurrence_scan"]
    outputs = [n for n, op in graph.nodes(data="op") if op == "output"]
    if len(scans) != 1:
        raise IRError(f"expected exactly one recurrence_scan node, found {len(scans)}")
    if len(outputs) != 1:
        raise IRError(f"expected exactly one output node, found {len(outputs)}")

    rec = graph.nodes[scans[0]].get("recurrence")
    if rec in RECURRENCES and (memory == "deep") != (rec in DEEP_RECURRENCES):
        raise IRError(
            f"graph memory is {memory!r} but scan {scans[0]!r} runs recurrence {rec!r}, "
            f"whose memory is {'deep' if rec in DEEP_RECURRENCES else 'matrix'}"
        )

    for node in graph.nodes:
        _check_node(graph, node)
    _check_dims(graph, scans[0], outputs[0])
    return clone(graph)


def _check_node(graph: nx.DiGraph, node: str) -> None:
    attrs = graph.nodes[node]
    op = attrs.get("op")
    slots = inputs_of(graph, node)
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
        if rec in DEEP_RECURRENCES:
            _check_deep_scan(node, attrs)
            need.add("weights")
            need |= {name for rate, name in DEEP_RATE_INPUT.items() if attrs.get(rate) == "data"}
        if rec in DECAY_RECURRENCES:
            need.add("g")
        if rec in DELTA_RECURRENCES:
            need.add("beta")
        _expect(node, slots, need, why=f"a {rec} scan")
    elif op == "read":
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
        # soup on a deep memory mixes the weights of every memory, then reads them at q.
        mixes = kind == "soup" and graph.graph.get("memory") == "deep"
        need = {"online"}
        if kind != "none":
            need.add("cached")
        if kind in ("grm", "soup", "ssc"):
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


def _check_deep_scan(node: str, attrs: dict) -> None:
    """The MLP attributes of a dla / titans scan (docs/method.md section 6)."""
    depth, hidden, params = attrs.get("depth"), attrs.get("hidden"), attrs.get("params")
    for key, value in (("depth", depth), ("hidden", hidden), ("minibatch", attrs.get("minibatch"))):
        if not isinstance(value, int) or value < 1:
            raise IRError(f"scan {node!r}: {key} must be a positive integer, got {value!r}")
    if attrs.get("activation") not in ACTIVATIONS:
        raise IRError(f"scan {node!r}: unknown activation {attrs.get('activation')!r}")
    dims = attrs.get("state_dims") or {}
    kdim, vdim = dims.get("K"), dims.get("V")
    if not isinstance(kdim, int) or kdim != vdim:
        raise IRError(
            f"scan {node!r}: a deep memory maps keys to values (M(x) = x + MLP(x)), so K must "
            f"equal V, got {dims!r}"
        )
    want = deep_params(depth, kdim, hidden, vdim)
    if params != want:
        raise IRError(
            f"scan {node!r}: an MLP of depth {depth}, K={kdim}, Dh={hidden} has {want} weights "
            f"per head, not params={params!r}"
        )
    titans = attrs.get("recurrence") == "titans"
    for rate in ("lr", "momentum", "decay"):
        value = attrs.get(rate)
        if rate != "lr" and not titans:
            if value is not None:
                raise IRError(f"scan {node!r}: dla has no {rate}, got {rate}={value!r}")
            continue
        if not _is_rate(value, fraction=rate != "lr"):
            bound = "in [0, 1)" if rate != "lr" else ">= 0"
            raise IRError(
                f"scan {node!r}: {rate} must be 'data' or a number {bound}, got {value!r}"
            )


def _is_rate(value: object, *, fraction: bool) -> bool:
    """'data', or a finite number >= 0 (and < 1 for a fraction: momentum, decay)."""
    if value == "data":
        return True
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value >= 0 and (value < 1 or not fraction)


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
