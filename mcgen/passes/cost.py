"""Cost annotation (docs/method.md section 7): FLOPs, bytes moved, training and decode memory.

Counts are per token and head unless a name says otherwise, averaged over the tokens of a
sequence of `seq_len`: the number of cached segments a token reads grows along the sequence,
and the exact mean (not an asymptote) is what makes short-sequence comparisons honest.
A multiply-add counts as 2 FLOPs. Small terms (softmax exponentials, l2 key norms, the
decay's scalar multiply, which chunked forms fold into the intra-chunk weights) are left out.

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
Training memory adds the per-token weights of a mini-batch (minibatch * P, when minibatch > 1);
decode adds titans' momentum (P, unless the momentum is the constant 0) and the weights at
the start of the current mini-batch (P, when minibatch > 1).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx

from mcgen.ir.errors import IRError
from mcgen.ir.graph import clone
from mcgen.segments import segment_ends
from mcgen.spec.schema import DELTA_RECURRENCES

FP32 = 4
BF16 = 2
GATED = ("grm", "soup", "ssc")


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
        if kind == "constant":
            assert length is not None and length > 0
            return cls(step=length)
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
    scan = graph.nodes["scan"]
    seg = graph.nodes["segments"]
    gate = graph.nodes.get("gate") or {}
    kdim, vdim = scan["state_dims"]["K"], scan["state_dims"]["V"]
    ends = SegmentEnds.of(seg["kind"], seg.get("length"), seg.get("boundaries"), seq_len)
    sums = SegmentSums.of(ends, seq_len, seq_len, gate.get("top_k"))
    # Attention form: every key up to the last cached segment end (with checkpoint the
    # caches hold all earlier keys, with independent the visible segments tile that
    # prefix), a score (2K) and a weighted value (2V) each.
    return (
        2 * kdim * vdim * sums.read / seq_len,
        (2 * kdim + 2 * vdim) * sums.keys_read / seq_len,
    )


def annotate_cost(graph: nx.DiGraph, seq_len: int, batch: int = 1) -> nx.DiGraph:
    """Return a copy of `graph` with a `cost` dict on every node and a summary in graph.graph."""
    if seq_len < 1 or batch < 1:
        raise ValueError(f"seq_len and batch must be positive, got {seq_len} and {batch}")
    out = clone(graph)
    scan = _node(out, "recurrence_scan")
    kdim, vdim = scan["state_dims"]["K"], scan["state_dims"]["V"]
    deep = out.graph.get("memory") == "deep"
    if deep and not isinstance(scan.get("params"), int):
        raise IRError("cost: a deep memory's scan needs `params`, its weights per head")
    heads = out.nodes["q"]["dims"]["H"] if "q" in out else 1
    chunk = min(int(scan.get("chunk_size", 64)), seq_len)
    seg = _node(out, "segmentation")
    agg_kind = _node(out, "aggregate")["kind"]
    gate = next((a for _, a in out.nodes(data=True) if a.get("op") == "gate"), None)
    top_k = gate.get("top_k") if gate is not None and gate.get("kind") == "topk_softmax" else None
    has_cache = any(op == "segment_cache" for _, op in out.nodes(data="op"))

    ends = SegmentEnds.of(seg["kind"], seg.get("length"), seg.get("boundaries"), seq_len)
    sums = SegmentSums.of(ends, seq_len, chunk, top_k)
    n_cached = sums.cached if has_cache else 0
    mean_visible = sums.visible / seq_len if has_cache else 0.0
    mean_read = sums.read / seq_len if has_cache else 0.0
    # States loaded per chunk of queries: all that any token of the chunk may read.
    # (ssc: a chunk of c tokens touches at most c * top_k distinct states.)
    chunk_loads = sums.chunk_read if has_cache else 0
    chunk_descriptor_loads = sums.chunk_visible if has_cache else 0
    n_chunks = math.ceil(seq_len / chunk)
    token_heads = seq_len * heads * batch
    lanes = heads * batch  # independent (batch, head) sequences
    kv = kdim * vdim
    # Numbers in one memory state: the V x K matrix, or the MLP's weights.
    state = int(scan["params"]) if deep else kv
    titans = deep and scan.get("recurrence") == "titans"
    minibatch = int(scan.get("minibatch") or 1) if deep else 1
    # titans keeps the momentum S unless it is the constant 0 (then S_t is just the step).
    momentum_state = titans and scan.get("momentum") != 0
    # A deep scan starts from the initial weights once, or at every segment with independent.
    starts = 1 + sums.interior_ends if scan.get("init") == "independent" else 1

    for _, attrs in out.nodes(data=True):
        op = attrs["op"]
        per_token = 0.0
        moved = 0.0
        if op == "input" and "P" in attrs["dims"]:
            moved = FP32 * attrs["dims"]["P"] * starts * lanes  # a deep memory's initial weights
        elif op == "input":
            width = attrs["dims"].get("K", attrs["dims"].get("V", 1))
            moved = BF16 * width * token_heads
        elif op == "output":
            moved = BF16 * vdim * token_heads
        elif op == "recurrence_scan" and deep:
            # Inner gradient (forward + backward of the MLP at k_t), then the step.
            per_token = 3 * 2 * state + (4 if titans else 2) * state
            buffers = 2 if momentum_state else 1  # the weights, and titans' momentum
            moved = 2 * FP32 * state * buffers * n_chunks * lanes
        elif op == "recurrence_scan":
            # Update v k^T (2KV); the chunked form adds the intra-chunk attention, about
            # chunk * (K + V) per token; delta rules also form S k before writing (2KV).
            per_token = 2 * kv + chunk * (kdim + vdim)
            if attrs["recurrence"] in DELTA_RECURRENCES:
                per_token += 2 * kv
            moved = 2 * FP32 * kv * n_chunks * lanes  # load + store the state per chunk
        elif op == "read" and attrs["source"] == "online":
            # Fused with the scan: the state is already loaded. Form weights (soup on a deep
            # memory) hands the weights to the aggregate, which reads once.
            per_token = 2 * state if attrs.get("form") != "weights" else 0
        elif op == "read" and attrs.get("form") == "attention":
            per_token = cached_read_flops(out, seq_len)[1]  # against the cached keys
            moved = BF16 * (kdim + vdim) * seq_len * n_chunks * lanes  # keys reloaded per chunk
        elif op == "read":
            per_token = 2 * state * mean_read if attrs.get("form") != "weights" else 0
            moved = FP32 * state * chunk_loads * lanes
        elif op == "segment_cache":
            moved = FP32 * state * n_cached * lanes  # one snapshot per complete segment
        elif op == "descriptor_pool":
            # A running prefix sum of k; mean also divides by the count.
            per_token = kdim * (2 if attrs["pool"] == "mean" else 1)
            moved = FP32 * kdim * n_cached * lanes
        elif op == "gate":
            # One logit (2K) per candidate: every visible segment, even for ssc (top-k needs
            # them all), plus the online memory.
            per_token = 2 * kdim * (mean_visible + 1)
            moved = FP32 * kdim * chunk_descriptor_loads * lanes
        elif op == "aggregate":
            if attrs["kind"] == "soup" and deep:
                # Mix the weights of every visible memory and the online one, read once.
                per_token = 2 * state * (mean_read + 1) + 2 * state
            elif attrs["kind"] in GATED:
                per_token = 2 * vdim * (mean_read + 1)  # weight and add every read
            elif attrs["kind"] == "residual":
                per_token = vdim * mean_read  # add the cached reads to the online one
        attrs["cost"] = {
            "flops_per_token": per_token,
            "flops": per_token * token_heads,
            "bytes": moved,
        }

    per_head = sum(a["cost"]["flops_per_token"] for _, a in out.nodes(data=True))
    gated = agg_kind in GATED and has_cache
    # Decode keeps the online state, every cached state and, for gated aggregations, one
    # descriptor per cache plus the prefix sum of k for the online descriptor.
    decode = state + n_cached * state + ((n_cached + 1) * kdim if gated else 0)
    training = n_cached * state
    if deep:
        # titans' momentum; the weights at the current mini-batch's start (its gradients are
        # taken there), and in training the per-token weights of a mini-batch.
        decode += state * (int(momentum_state) + int(minibatch > 1))
        training += minibatch * state if minibatch > 1 else 0
    out.graph["cost"] = {
        "seq_len": seq_len,
        "batch": batch,
        "heads": heads,
        "key_dim": kdim,
        "value_dim": vdim,
        "memory": "deep" if deep else "matrix",
        "state_numbers_per_head": state,
        "chunk_size": chunk,
        "cached_segments": n_cached,
        "mean_visible": mean_visible,
        "mean_read": mean_read,
        "flops_per_token_per_head": per_head,
        "flops_per_token": per_head * heads,
        "flops": per_head * token_heads,
        "bytes": sum(a["cost"]["bytes"] for _, a in out.nodes(data=True)),
        "training_memory_numbers_per_head": training,
        "training_memory_bytes": FP32 * training * lanes,
        "decode_state_numbers_per_head": decode,
        "decode_state_bytes": FP32 * decode * lanes,
    }
    return out


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


def _node(graph: nx.DiGraph, op: str) -> dict[str, Any]:
    found = [a for _, a in graph.nodes(data=True) if a.get("op") == op]
    if len(found) != 1:
        raise IRError(f"cost needs exactly one {op} node, found {len(found)}")
    return found[0]
