"""The ops of the graph IR: one frozen record per kind of node.

Each node of the networkx graph keeps its op under one attribute, `graph.nodes[n]["op"]`;
passes find nodes by the type of their op (`nodes_of(graph, Gate)`), never by their id, and
rewrite a record with `dataclasses.replace` in a new graph. The cost pass adds a `cost`
dict beside it (a measurement of the op, not part of it).

The fields come in the order `mcgen inspect` shows them; `None` means "not given" and is
left out of the rendering. Dicts (dims) are read-only by convention: a pass that changes
one builds a new dict.

This module imports nothing of mcgen, so components can name these types without loops.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, TypeVar

import networkx as nx

Dims = dict[str, int]  # axis symbol -> size: {"H": 4, "K": 64}
Init = Literal["checkpoint", "independent"]
# A read of a whole state, of the cached keys (attention), or handing weights to soup.
ReadForm = Literal["state", "attention", "weights"]


@dataclass(frozen=True, kw_only=True)
class Op:
    """What every op record shares: the name `mcgen inspect` prints for its kind."""

    kind_name: ClassVar[str]


@dataclass(frozen=True, kw_only=True)
class Input(Op):
    """An op input: an activation ([B,T,H,K]...), a rate ([B,T,H]) or initial weights."""

    kind_name = "input"
    name: str  # the op's argument: q, k, v, u, g, beta, eta, weights
    shape: str
    dims: Dims
    dtype: str


@dataclass(frozen=True, kw_only=True)
class Segmentation(Op):
    """Where segments end: a kind, set by a length or by explicit boundaries."""

    kind_name = "segmentation"
    kind: str  # a registered segmentation
    length: int | None = None
    boundaries: tuple[int, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class Scan(Op):
    """The recurrence over the tokens: the memory it keeps and how it is updated.

    The deep attributes (depth ... decay) are set for an MLP memory only; a rate is a
    number, "data" (an op input) or None (a rate this memory lacks)."""

    kind_name = "recurrence_scan"
    recurrence: str  # a registered recurrence
    init: Init
    state_shape: str  # in symbols: [V,K], MLP K->Dh->V (depth 2)
    state_dims: Dims  # {"V": ..., "K": ...}
    state_dtype: str
    params: int | None = None  # weights per head of an MLP memory
    chunk_size: int  # tokens per chunk of the chunked execution
    depth: int | None = None
    hidden: int | None = None
    activation: str | None = None
    minibatch: int | None = None
    lr: float | str | None = None
    momentum: float | str | None = None
    decay: float | str | None = None


@dataclass(frozen=True, kw_only=True)
class SegmentCache(Op):
    """The scan's state at every segment end, kept for later reads."""

    kind_name = "segment_cache"
    state_shape: str
    state_dims: Dims
    state_dtype: str
    params: int | None = None


@dataclass(frozen=True, kw_only=True)
class DescriptorPool(Op):
    """One key descriptor per segment (the mean or sum of its keys), for the gate."""

    kind_name = "descriptor_pool"
    pool: str  # mean or sum
    dims: Dims


@dataclass(frozen=True, kw_only=True)
class Gate(Op):
    """The weights of the memories: a softmax (over the top_k only) of u against descriptors."""

    kind_name = "gate"
    kind: str  # softmax or topk_softmax
    top_k: int | None = None
    gate_scale: float
    connector: str  # separate (an input u) or query (q itself)


@dataclass(frozen=True, kw_only=True)
class Read(Op):
    """A read of the online state or of the cached ones.

    `requested_form` is the spec's compute.read_form for a cached read (auto lets the cost
    decide); the read_form pass sets `form` from it and says why in `form_reason`."""

    kind_name = "read"
    source: Literal["online", "cache"]
    form: ReadForm
    form_reason: str | None = None
    requested_form: Literal["auto", "state", "attention"] = "auto"


@dataclass(frozen=True, kw_only=True)
class Aggregate(Op):
    """How a token combines its reads: a registered aggregation."""

    kind_name = "aggregate"
    kind: str


@dataclass(frozen=True, kw_only=True)
class Output(Op):
    kind_name = "output"
    shape: str
    dims: Dims
    dtype: str


OpT = TypeVar("OpT", bound=Op)


def op_of(graph: nx.DiGraph, node: str) -> Op | None:
    """The op record of `node`; None when it has none (a graph not made by lower())."""
    op = graph.nodes[node].get("op")
    return op if isinstance(op, Op) else None


def nodes_of(graph: nx.DiGraph, kind: type[OpT]) -> Iterator[tuple[str, OpT]]:
    """(node, record) for every node whose op is a `kind`, in the graph's node order."""
    for node, op in graph.nodes(data="op"):
        if isinstance(op, kind):
            yield node, op


def single_memory(
    graph: nx.DiGraph,
) -> tuple[tuple[str, Aggregate], tuple[str, Scan], tuple[str, Segmentation]] | None:
    """The (node, record) of a graph's aggregation, scan and segmentation, where it has one
    of each (the shape the rewriting passes know); None otherwise."""
    found = [list(nodes_of(graph, kind)) for kind in (Aggregate, Scan, Segmentation)]
    if any(len(nodes) != 1 for nodes in found):
        return None
    (aggregate,), (scan,), (segmentation,) = found
    return aggregate, scan, segmentation


def reads_from(graph: nx.DiGraph, source: str) -> tuple[str, Read] | None:
    """The read of the online state (`online`) or of the cache (`cache`), if there is one."""
    return next(((n, r) for n, r in nodes_of(graph, Read) if r.source == source), None)


def input_named(graph: nx.DiGraph, name: str) -> tuple[str, Input] | None:
    """The op input that is argument `name` (q, u, weights...), if the op takes it."""
    return next(((n, i) for n, i in nodes_of(graph, Input) if i.name == name), None)


def rewrite(graph: nx.DiGraph, node: str, **changes: Any) -> Op:
    """Put a copy of `node`'s record with `changes` in its place; returns the new record.

    For passes rewriting their own copy of a graph: the old record is left as it was, so a
    graph sharing it is unchanged."""
    new = replace(graph.nodes[node]["op"], **changes)
    graph.nodes[node]["op"] = new
    return new
