"""Cost annotation (docs/method.md section 7): FLOPs, bytes moved, training and decode memory.

Counts are per token and head unless a name says otherwise, averaged over the tokens of a
sequence of `seq_len`: the number of cached segments a token reads grows along the sequence,
and the exact mean (not an asymptote) is what makes short-sequence comparisons honest.
A multiply-add counts as 2 FLOPs. Small terms (softmax exponentials, l2 key norms, the
decay's scalar multiply, which chunked forms fold into the intra-chunk weights) are left out.

The driver, `annotate_cost`, runs one cost function per op (OP_COSTS); the scan's and the
aggregate's formulas are their components' (mcgen/components/: recurrences/matrix.py and
recurrences/deep.py, aggregations/*.py), as is the size of one memory state.

Every count over the tokens or chunks of the sequence is a closed form over the segment ends
(`SegmentSums`), so the cost of any `seq_len` takes the same little time and memory.

Bytes assume the chunked execution the backends use: each fp32 state (online or cached) is
loaded once per chunk of `compute.chunk_size` queries, activations are bf16 and touched once.

Deep memories (dla, titans; docs/method.md section 6) hold P = `params` MLP weights per head
in place of a V x K matrix, and a read is a forward pass of the MLP, 2P FLOPs (activations
and the residual x + ... are small terms, left out). Per token the scan takes the inner
gradient at k_t (forward, then backward to the weights and to the hidden activations: 3 * 2P)
and steps: dla W <- W - theta g (2P, theta folded into the multiply-add); titans also keeps
the momentum S <- eta S - theta g and decays W <- (1 - alpha) W + S (4P in all). Cached reads
(residual, grm, ssc) read each memory, 2P per read. `soup` instead mixes the weights of the
visible memories and the online one with the gate weights, 2P per memory, then reads the
mixture once (2P): its arithmetic is that of grm's reads plus one read, less grm's mixing of
the outputs, and it loads every visible memory's weights per chunk just as grm does.
Training memory adds a mini-batch's inner gradients as their factors, each layer's output error
and input (minibatch * (K + 2 (depth - 1) Dh + V), when minibatch > 1), and titans' three
[minibatch, minibatch] mixing matrices of momentum and decay;
decode adds titans' momentum (P, unless the momentum is the constant 0) and the weights at
the start of the current mini-batch (P, when minibatch > 1).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import networkx as nx

from mcgen.components.base import FP32_BYTES, Component, CostContext, RecurrenceComponent
from mcgen.components.registry import AGGREGATIONS, RECURRENCES, SEGMENTATIONS, Kind
from mcgen.ir.errors import IRError
from mcgen.ir.graph import clone
from mcgen.ir.ops import (
    Aggregate,
    DescriptorPool,
    Gate,
    Input,
    Op,
    OpT,
    Output,
    Read,
    Scan,
    Segmentation,
    SegmentCache,
    input_named,
    nodes_of,
)
from mcgen.segments import segment_ends

FP32 = FP32_BYTES
BF16 = 2

C = TypeVar("C", bound=Component)


@dataclass(frozen=True)
class CostRow:
    """One line of the spec-vs-attention table; `ratio` is spec / attention."""

    metric: str
    unit: str  # "FLOP", "B" (bytes) or "" (a count)
    spec: float
    attention: float

    @property
    def ratio(self) -> float | None:
        return self.spec / self.attention if self.attention else None


def visible_per_token(
    kind: str, length: int | None, boundaries: tuple[int, ...] | None, seq_len: int
) -> list[int]:
    """Cached segments token t can read, for t = 0 .. seq_len-1 (those ending at or before t).

    One number per token: for looking at short sequences; the cost pass uses SegmentSums.
    """
    ends = segment_ends(kind, length, boundaries, seq_len)
    return [bisect_right(ends, t) for t in range(seq_len)]


def floor_sum(n: int, m: int, a: int, b: int) -> int:
    """sum of floor((a * i + b) / m) for i = 0 .. n-1 (a, b >= 0, m >= 1), in O(log) steps."""
    total = 0
    while True:
        if a >= m:
            total += n * (n - 1) // 2 * (a // m)
            a %= m
        if b >= m:
            total += n * (b // m)
            b %= m
        largest = a * n + b
        if largest < m:
            return total
        n, b = divmod(largest, m)
        m, a = a, m


@dataclass(frozen=True)
class SegmentEnds:
    """The end positions of segments, in order: every `step` tokens (constant segments),
    or `listed` (logarithmic and explicit ones: a few dozen at most)."""

    step: int | None = None
    listed: tuple[int, ...] = ()

    @classmethod
    def of(
        cls, kind: str, length: int | None, boundaries: Sequence[int] | None, seq_len: int
    ) -> SegmentEnds:
        step = SEGMENTATIONS.get(kind).period(length)
        if step is not None:
            assert step > 0
            return cls(step=step)
        return cls(listed=tuple(segment_ends(kind, length, boundaries, seq_len)))

    def count(self, limit: int) -> int:
        """How many ends are <= limit."""
        if self.step is not None:
            return max(limit, 0) // self.step
        return bisect_right(self.listed, limit)

    def total(self, n: int) -> int:
        """The sum of the first n ends."""
        if self.step is not None:
            return self.step * n * (n + 1) // 2
        return sum(self.listed[:n])

    def total_quotient(self, n: int, divisor: int) -> int:
        """The sum of end // divisor over the first n ends."""
        if self.step is not None:
            return floor_sum(n, divisor, self.step, self.step)
        return sum(e // divisor for e in self.listed[:n])

    def keys_before(self, seq_len: int) -> int:
        """Over the tokens t < seq_len, the sum of the last end <= t (0 before the first)."""
        n = self.count(seq_len - 1)
        if self.step is not None:
            c = self.step
            return c * c * n * (n - 1) // 2 + n * c * (seq_len - n * c)
        ends = self.listed[:n]
        if not ends:
            return 0
        following = (*ends[1:], seq_len)
        return sum(e * (after - e) for e, after in zip(ends, following, strict=True))


@dataclass(frozen=True)
class SegmentSums:
    """What the cost model counts over the tokens and chunks of one sequence.

    v(t) = cached segments token t can read (ends <= t); chunk c's loads are v at its last
    token (all that any of its tokens may read), capped for top-k at top_k per token.
    """

    cached: int  # segments complete within seq_len
    interior_ends: int  # ends before seq_len: each starts a new segment
    visible: int  # sum over t of v(t)
    read: int  # sum over t of min(v(t), top_k)
    keys_read: int  # sum over t of the last end <= t: keys the attention form reads
    chunk_visible: int  # sum over chunks of v(last token)
    chunk_read: int  # sum over chunks of min(v(last token), top_k * chunk tokens)

    @classmethod
    def of(cls, ends: SegmentEnds, seq_len: int, chunk: int, top_k: int | None) -> SegmentSums:
        cached, interior = ends.count(seq_len), ends.count(seq_len - 1)
        visible = cached * seq_len - ends.total(cached)  # end e is read by seq_len - e tokens
        # min(v(t), k) counts only the first k ends.
        first = cached if top_k is None else min(top_k, cached)
        read = first * seq_len - ends.total(first)
        # Chunk c (tokens < its stop) loads end e < seq_len iff its stop > e: every chunk
        # from e // chunk on.
        chunks = math.ceil(seq_len / chunk)
        chunk_visible = interior * chunks - ends.total_quotient(interior, chunk)
        chunk_read = chunk_visible
        if top_k is not None:
            full, rest = divmod(seq_len, chunk)
            first = min(interior, top_k * chunk)
            chunk_read = first * full - ends.total_quotient(first, chunk)
            chunk_read += min(interior, top_k * rest) if rest else 0
        return cls(
            cached=cached,
            interior_ends=interior,
            visible=visible,
            read=read,
            keys_read=ends.keys_before(seq_len),
            chunk_visible=chunk_visible,
            chunk_read=chunk_read,
        )


def cached_read_flops(graph: nx.DiGraph, seq_len: int) -> tuple[float, float]:
    """(state form, attention form) FLOPs per token and head of the cached reads."""
    scan, seg = _node(graph, Scan), _node(graph, Segmentation)
    gate = next((g for _, g in nodes_of(graph, Gate)), None)
    kdim, vdim = scan.state_dims["K"], scan.state_dims["V"]
    ends = SegmentEnds.of(seg.kind, seg.length, seg.boundaries, seq_len)
    sums = SegmentSums.of(ends, seq_len, seq_len, gate.top_k if gate is not None else None)
    # Attention form: every key up to the last cached segment end (with checkpoint the
    # caches hold all earlier keys, with independent the visible segments tile that
    # prefix), a score (2K) and a weighted value (2V) each.
    return (
        2 * kdim * vdim * sums.read / seq_len,
        (2 * kdim + 2 * vdim) * sums.keys_read / seq_len,
    )


@dataclass(frozen=True)
class _Counts:
    """What the per-op cost functions read: the components' context and the sequence's counts
    (zero cached memories when the graph keeps no cache)."""

    ctx: CostContext
    graph: nx.DiGraph
    seq_len: int
    token_heads: int  # tokens x heads x batch
    starts: int  # times a scan starts from the initial state (deep: loads its weights)
    cached: int  # memories complete within seq_len
    mean_visible: float  # cached memories a token can see, averaged
    chunk_loads: int  # cached states loaded, summed over the chunks of queries
    chunk_descriptor_loads: int  # descriptors loaded, summed over the chunks (all visible)
    has_cache: bool  # the graph keeps a segment cache (its descriptors count at decode)
    recurrence: RecurrenceComponent


NodeCost = tuple[float, float]  # (FLOPs per token and head, bytes moved in all)


def _no_cost(op: Op, c: _Counts) -> NodeCost:
    return 0.0, 0.0


def _input_cost(op: Input, c: _Counts) -> NodeCost:
    dims = op.dims
    if "P" in dims:  # a deep memory's initial weights, loaded wherever a scan starts
        return 0.0, FP32 * dims["P"] * c.starts * c.ctx.lanes
    return 0.0, BF16 * dims.get("K", dims.get("V", 1)) * c.token_heads


def _output_cost(op: Output, c: _Counts) -> NodeCost:
    return 0.0, BF16 * c.ctx.value_dim * c.token_heads


def _scan_cost(op: Scan, c: _Counts) -> NodeCost:
    return c.recurrence.scan_cost(c.ctx)


def _read_cost(op: Read, c: _Counts) -> NodeCost:
    ctx = c.ctx
    # Form weights (soup on a deep memory) hands the weights to the aggregate, which reads.
    per_read = 2 * ctx.state if op.form != "weights" else 0
    if op.source == "online":
        return per_read, 0.0  # fused with the scan: the state is already loaded
    if op.form == "attention":  # against the cached keys, reloaded per chunk
        moved = BF16 * (ctx.key_dim + ctx.value_dim) * c.seq_len * ctx.n_chunks * ctx.lanes
        return cached_read_flops(c.graph, c.seq_len)[1], moved
    return per_read * ctx.mean_read, FP32 * ctx.state * c.chunk_loads * ctx.lanes


def _cache_cost(op: SegmentCache, c: _Counts) -> NodeCost:
    return 0.0, FP32 * c.ctx.state * c.cached * c.ctx.lanes  # a snapshot per complete segment


def _pool_cost(op: DescriptorPool, c: _Counts) -> NodeCost:
    # A running prefix sum of k; mean also divides by the count.
    kdim = c.ctx.key_dim
    return kdim * (2 if op.pool == "mean" else 1), FP32 * kdim * c.cached * c.ctx.lanes


def _gate_cost(op: Gate, c: _Counts) -> NodeCost:
    # One logit (2K) per candidate: every visible segment, even for a top-k gate (it needs
    # them all), plus the online memory.
    kdim = c.ctx.key_dim
    moved = FP32 * kdim * c.chunk_descriptor_loads * c.ctx.lanes
    return 2 * kdim * (c.mean_visible + 1), moved


def _aggregate_cost(op: Aggregate, c: _Counts) -> NodeCost:
    return _component(AGGREGATIONS, op.kind).aggregate_flops(c.ctx), 0.0


# Each op's cost, by the type of its record; the scan's and the aggregate's formulas are
# their components'. An op missing here costs nothing (the segmentation is bookkeeping).
OP_COSTS: dict[type[Op], Callable[[Any, _Counts], NodeCost]] = {
    Segmentation: _no_cost,
    Input: _input_cost,
    Output: _output_cost,
    Scan: _scan_cost,
    Read: _read_cost,
    SegmentCache: _cache_cost,
    DescriptorPool: _pool_cost,
    Gate: _gate_cost,
    Aggregate: _aggregate_cost,
}


def annotate_cost(graph: nx.DiGraph, seq_len: int, batch: int = 1) -> nx.DiGraph:
    """Return a copy of `graph` with a `cost` dict on every node and a summary in graph.graph."""
    if seq_len < 1 or batch < 1:
        raise ValueError(f"seq_len and batch must be positive, got {seq_len} and {batch}")
    out = clone(graph)
    counts = _counts(out, seq_len, batch)
    for _, attrs in out.nodes(data=True):
        op = attrs["op"]
        per_token, moved = OP_COSTS.get(type(op), _no_cost)(op, counts)
        attrs["cost"] = {
            "flops_per_token": per_token,
            "flops": per_token * counts.token_heads,
            "bytes": moved,
        }
    out.graph["cost"] = _summary(out, counts, batch)
    return out


def _counts(graph: nx.DiGraph, seq_len: int, batch: int) -> _Counts:
    scan = _node(graph, Scan)
    recurrence = _component(RECURRENCES, scan.recurrence)
    query = input_named(graph, "q")
    heads = query[1].dims["H"] if query is not None else 1
    chunk = min(scan.chunk_size, seq_len)
    seg = _node(graph, Segmentation)
    gate = next((g for _, g in nodes_of(graph, Gate)), None)
    top_k = gate.top_k if gate is not None and gate.kind == "topk_softmax" else None
    has_cache = any(True for _ in nodes_of(graph, SegmentCache))
    ends = SegmentEnds.of(seg.kind, seg.length, seg.boundaries, seq_len)
    sums = SegmentSums.of(ends, seq_len, chunk, top_k)
    n_chunks = math.ceil(seq_len / chunk)
    ctx = CostContext(
        key_dim=scan.state_dims["K"],
        value_dim=scan.state_dims["V"],
        state=recurrence.state_numbers(scan),
        chunk=chunk,
        n_chunks=n_chunks,
        lanes=heads * batch,
        mean_read=sums.read / seq_len if has_cache else 0.0,
        deep=recurrence.memory == "deep",
        scan=scan,
    )
    return _Counts(
        ctx=ctx,
        graph=graph,
        seq_len=seq_len,
        token_heads=seq_len * heads * batch,
        starts=1 + sums.interior_ends if scan.init == "independent" else 1,
        cached=sums.cached if has_cache else 0,
        mean_visible=sums.visible / seq_len if has_cache else 0.0,
        # States loaded per chunk of queries: all that any token of the chunk may read
        # (a top-k read: a chunk of c tokens touches at most c * top_k distinct states).
        chunk_loads=sums.chunk_read if has_cache else 0,
        chunk_descriptor_loads=sums.chunk_visible if has_cache else 0,
        has_cache=has_cache,
        recurrence=recurrence,
    )


def _summary(graph: nx.DiGraph, c: _Counts, batch: int) -> dict[str, Any]:
    ctx = c.ctx
    heads = ctx.lanes // batch
    state = ctx.state
    per_head = sum(a["cost"]["flops_per_token"] for _, a in graph.nodes(data=True))
    aggregation = _component(AGGREGATIONS, _node(graph, Aggregate).kind)
    # Decode keeps the online state, every cached state and, for gated aggregations, one
    # descriptor per cache plus the prefix sum of k for the online descriptor.
    descriptors = (c.cached + 1) * ctx.key_dim if aggregation.gated and c.has_cache else 0
    decode = state + c.cached * state + descriptors
    training = c.cached * state
    held_decode, held_training = c.recurrence.held_numbers(ctx)
    decode += held_decode
    training += held_training
    return {
        "seq_len": c.seq_len,
        "batch": batch,
        "heads": heads,
        "key_dim": ctx.key_dim,
        "value_dim": ctx.value_dim,
        "memory": c.recurrence.memory,
        "state_numbers_per_head": state,
        "chunk_size": ctx.chunk,
        "cached_segments": c.cached,
        "mean_visible": c.mean_visible,
        "mean_read": ctx.mean_read,
        "flops_per_token_per_head": per_head,
        "flops_per_token": per_head * heads,
        "flops": per_head * c.token_heads,
        "bytes": sum(a["cost"]["bytes"] for _, a in graph.nodes(data=True)),
        "training_memory_numbers_per_head": training,
        "training_memory_bytes": FP32 * training * ctx.lanes,
        "decode_state_numbers_per_head": decode,
        "decode_state_bytes": FP32 * decode * ctx.lanes,
    }


def attention_cost(
    heads: int, key_dim: int, value_dim: int, seq_len: int, batch: int = 1
) -> dict[str, Any]:
    """Causal softmax attention of the same size, in the keys of the graph's cost summary.

    Token t scores t+1 keys (2K each) and mixes t+1 values (2V each); the mean context over
    t = 0 .. T-1 is (T+1)/2. Memory is the bf16 key/value cache every read consults: T*(K+V)
    per head, kept for the backward pass in training and grown token by token in decode.
    """
    per_head = 2 * (key_dim + value_dim) * (seq_len + 1) / 2
    lanes = heads * batch
    kv_cache = seq_len * (key_dim + value_dim)
    return {
        "seq_len": seq_len,
        "batch": batch,
        "heads": heads,
        "key_dim": key_dim,
        "value_dim": value_dim,
        "flops_per_token_per_head": per_head,
        "flops_per_token": per_head * heads,
        "flops": per_head * seq_len * lanes,
        "training_memory_numbers_per_head": kv_cache,
        "training_memory_bytes": BF16 * kv_cache * lanes,
        "decode_state_numbers_per_head": kv_cache,
        "decode_state_bytes": BF16 * kv_cache * lanes,
    }


def cost_table(graph: nx.DiGraph) -> list[CostRow]:
    """Rows comparing an annotated graph with attention of the same heads, dims and length."""
    cost = graph.graph.get("cost")
    if cost is None:
        raise IRError("the graph has no cost summary: run annotate_cost first")
    attn = attention_cost(
        cost["heads"], cost["key_dim"], cost["value_dim"], cost["seq_len"], cost["batch"]
    )
    rows = [
        ("FLOPs per token (all heads)", "FLOP", "flops_per_token"),
        ("FLOPs total", "FLOP", "flops"),
        ("training memory", "B", "training_memory_bytes"),
        ("decode state", "B", "decode_state_bytes"),
        ("decode state per head (numbers)", "", "decode_state_numbers_per_head"),
    ]
    return [CostRow(label, unit, float(cost[key]), float(attn[key])) for label, unit, key in rows]


def _component(kind: Kind[C], name: object) -> C:
    found = kind.find(name)
    if found is None:
        raise IRError(f"cost: unknown {kind.what} {name!r}")
    return found


def _node(graph: nx.DiGraph, kind: type[OpT]) -> OpT:
    found = [op for _, op in nodes_of(graph, kind)]
    if len(found) != 1:
        raise IRError(f"cost needs exactly one {kind.kind_name} node, found {len(found)}")
    return found[0]
