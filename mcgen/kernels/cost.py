"""What each generated kernel should cost: FLOPs, bytes moved, and its roofline time on a card.

A kernel's formula is one entry of FORMULAS, keyed by the kernel's name: a function of
the problem (B, T, H, K, V, the chunk, the cached segments, top_k) and of the recorded
launch (its tiles, and its tensors' sizes and dtypes). Bytes are the sizes of the tensors
a kernel touches, each once, plus what a formula knows is read again (a cached state read
once per row block that sees it). FLOPs count the dots (2 per multiply-add) and the gate
logits; elementwise work is left out. A kernel without an entry has no cost ("-").

Roofline time: max(FLOPs / peak, bytes / bandwidth), the peak being that of the kernel's
slowest dot path as compiled (FMA: the card's fp32 rate; tf32 or 16-bit tensor cores).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mcgen.ir.plan import Plan
from mcgen.passes.cost import SegmentEnds, SegmentSums


@dataclass(frozen=True)
class Card:
    """Dense peak rates (FLOP/s) per dot path and memory bandwidth (bytes/s)."""

    name: str
    tensor_16bit: float  # bf16 / fp16 tensor cores, fp32 accumulation
    tensor_tf32: float
    fp32: float  # CUDA cores: FMA dots and everything else
    bandwidth: float


CARDS = {
    "h100": Card("H100 SXM", 989e12, 494.5e12, 66.9e12, 3.35e12),
    "h200": Card("H200", 989e12, 494.5e12, 66.9e12, 4.8e12),
    "a100": Card("A100 SXM 80GB", 312e12, 156e12, 19.5e12, 2.039e12),
}
DEFAULT_CARD = {"sm_90": "h100", "sm_80": "a100"}


@dataclass(frozen=True)
class Cost:
    flops: float
    bytes: float

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes + other.bytes)


@dataclass(frozen=True)
class Problem:
    """One forward (or backward) of the op at one shape, as the spec's plan computes it."""

    batch: int
    seq_len: int
    heads: int
    key_dim: int
    value_dim: int
    chunk: int  # compute.chunk_size
    ends: SegmentEnds  # where cached segments end
    top_k: int | None  # ssc: memories each token reads

    @classmethod
    def of(cls, plan: Plan, shape: tuple[int, int, int, int, int]) -> Problem:
        """The problem a package built from `plan` solves at shape (B, T, H, K, V)."""
        batch, seq_len, heads, key_dim, value_dim = shape
        return cls(
            batch=batch,
            seq_len=seq_len,
            heads=heads,
            key_dim=key_dim,
            value_dim=value_dim,
            chunk=plan.chunk_size,
            ends=SegmentEnds.of(plan.segments, plan.segment_length, plan.boundaries, seq_len),
            top_k=plan.top_k,
        )

    @property
    def rows(self) -> int:
        """Token rows over every sequence and head: B * T * H."""
        return self.batch * self.seq_len * self.heads

    @property
    def state(self) -> int:
        """Numbers in one memory state: K * V."""
        return self.key_dim * self.value_dim

    @property
    def memories(self) -> int:
        """Cached segment-end states per sequence and head."""
        return SegmentSums.of(self.ends, self.seq_len, self.seq_len, self.top_k).cached

    def block_pairs(self, block: int) -> int:
        """(row block, cached memory) pairs over every sequence and head, when blocks of
        `block` consecutive tokens each load every memory any of their rows reads."""
        sums = SegmentSums.of(self.ends, self.seq_len, block, self.top_k)
        return self.batch * self.heads * sums.chunk_read

    @property
    def key_pairs(self) -> int:
        """(query token, cached key) pairs the attention form reads, over every sequence and
        head: each token reads every key up to the last segment end before it."""
        return self.batch * self.heads * self.ends.keys_before(self.seq_len)

    @property
    def visible_pairs(self) -> int:
        """(token, cached memory it can see) pairs over every sequence and head."""
        sums = SegmentSums.of(self.ends, self.seq_len, self.seq_len, None)
        return self.batch * self.heads * sums.visible

    @property
    def read_pairs(self) -> int:
        """(token, cached memory it reads) pairs over every sequence and head: the visible
        ones, at most top_k per token."""
        sums = SegmentSums.of(self.ends, self.seq_len, self.seq_len, self.top_k)
        return self.batch * self.heads * sums.read

    def to_json(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "seq_len": self.seq_len,
            "heads": self.heads,
            "key_dim": self.key_dim,
            "value_dim": self.value_dim,
            "chunk": self.chunk,
            "memories": self.memories,
            "top_k": self.top_k,
        }


class LaunchFacts:
    """The recorded launch as a formula reads it (a missing name raises KeyError)."""

    def __init__(self, launch: dict[str, Any]):
        self.grid = tuple(launch["grid"])
        self.constexprs = launch["constexprs"]
        self.tensors = launch["tensors"]

    def const(self, name: str) -> Any:
        return self.constexprs[name]

    def itemsize(self, name: str) -> int:
        return self.tensors[name]["itemsize"]

    def size(self, name: str) -> int:
        """Bytes of one tensor argument (its shape times its element size)."""
        tensor = self.tensors[name]
        return math.prod(tensor["shape"]) * tensor["itemsize"]

    def all_bytes(self, *, exclude: tuple[str, ...] = ()) -> int:
        """Bytes of every tensor argument but `exclude`, each counted once."""
        return sum(self.size(name) for name in self.tensors if name not in exclude)


Formula = Callable[[Problem, LaunchFacts], Cost]


# The read kernels launch one head's programs together (the head is the slower grid axis),
# so what a head's programs re-read stays in L2 (50 MB on an H100, 60 MB on an H200) when it
# fits in this much; re-reads then cost L2 bandwidth, not DRAM bytes.
L2_RESIDENT_BYTES = 32 * 2**20


def _cached_read(p: Problem, launch: LaunchFacts, flops_per_row_pair: int) -> Cost:
    """A read of cached states by blocks of BT rows, each block loading every state its rows
    read and doing `flops_per_row_pair` per (row, state). DRAM bytes: every tensor once while
    a head's states fit in L2_RESIDENT_BYTES, else each block's state loads. Blocks are taken
    as BT-row runs from the sequence start."""
    block = launch.const("BT")
    pairs = p.block_pairs(block)
    flops = flops_per_row_pair * pairs * block
    if p.memories * p.state * launch.itemsize("states") <= L2_RESIDENT_BYTES:
        return Cost(flops, launch.all_bytes())
    states = pairs * p.state * launch.itemsize("states")
    return Cost(flops, launch.all_bytes(exclude=("states",)) + states)


def _memory_major_read(p: Problem, launch: LaunchFacts, flops_per_row_pair: int) -> Cost:
    """A program per cached state walking the row blocks that read it: the state's gradient
    written once, each block's q, do and weights loaded once per state it sees (from L2 while
    one head's q and do fit in L2_RESIDENT_BYTES, so every tensor once from DRAM)."""
    block = launch.const("BT")
    rows = p.block_pairs(block) * block
    flops = flops_per_row_pair * rows
    per_token = p.key_dim * launch.itemsize("q") + p.value_dim * launch.itemsize("do")
    if p.batch * p.seq_len * per_token <= L2_RESIDENT_BYTES:
        return Cost(flops, launch.all_bytes())
    per_row = per_token + launch.itemsize("weights")
    return Cost(flops, launch.all_bytes() + rows * per_row)


def _key_read(p: Problem, launch: LaunchFacts, flops_per_key: int, flops_per_memory: int) -> Cost:
    """A read of the cached segments' keys and values by query chunks (the attention form):
    `flops_per_key` per (query token, visible key), `flops_per_memory` per (token, visible
    memory) for its gate. DRAM bytes: every tensor once while a head's keys and values fit
    in L2_RESIDENT_BYTES, else each query chunk's loads of the keys it reads."""
    flops = flops_per_key * p.key_pairs + flops_per_memory * p.visible_pairs
    per_key = p.key_dim * launch.itemsize("k") + p.value_dim * launch.itemsize("v")
    if p.batch * p.seq_len * per_key <= L2_RESIDENT_BYTES:
        return Cost(flops, launch.all_bytes())
    key_loads = p.key_pairs // launch.const("C")  # each query chunk loads each key once
    return Cost(flops, launch.all_bytes(exclude=("k", "v")) + key_loads * per_key)


def _grouped_read(
    p: Problem, launch: LaunchFacts, flops_per_pair: int, gathered: tuple[str, ...]
) -> Cost:
    """A kernel over ssc's (row, chosen memory) pairs grouped by (head, memory): each pair
    gathers its row of the `gathered` tensors. A head's pairs run together, so those rows
    come from DRAM once while one head's share of them fits in L2_RESIDENT_BYTES, else once
    per pair; a memory's state is read once per head (its tiles are consecutive)."""
    pairs = p.read_pairs
    rows_bytes = sum(launch.size(name) for name in gathered)
    if rows_bytes / (p.batch * p.heads) > L2_RESIDENT_BYTES:
        rows_bytes = rows_bytes * pairs / p.rows
    return Cost(flops_per_pair * pairs, launch.all_bytes(exclude=gathered) + rows_bytes)


# One entry per kernel name: FLOPs from the problem's sizes, bytes from the launch's tensors.
FORMULAS: dict[str, Formula] = {
    # S += k^T v per chunk; the memory after every chunk written.
    "_state_fwd_kernel": lambda p, launch: Cost(2 * p.rows * p.state, launch.all_bytes()),
    # o = q S^T + causal(q k^T) v: full-chunk dots.
    "_output_fwd_kernel": lambda p, launch: Cost(
        2 * p.rows * (p.state + p.chunk * (p.key_dim + p.value_dim)), launch.all_bytes()
    ),
    # dS += q^T do per chunk, backwards.
    "_state_bwd_kernel": lambda p, launch: Cost(2 * p.rows * p.state, launch.all_bytes()),
    # dq, dk, dv of a chunk: three state-sized dots, four chunk-sized ones.
    "_chunk_bwd_kernel": lambda p, launch: Cost(
        2 * p.rows * (3 * p.state + 2 * p.chunk * (p.key_dim + p.value_dim)), launch.all_bytes()
    ),
    # Per (row, state): r_i = S_i q (2KV) and the gate logit <u, d_i> (2K).
    "_read_state_fwd_kernel": lambda p, launch: _cached_read(p, launch, 2 * (p.state + p.key_dim)),
    # Per (row, state): Z = do S_i (2KV), the logit and <Z, q> (2K each).
    "_read_state_bwd_rows_kernel": lambda p, launch: _cached_read(
        p, launch, 2 * p.state + 4 * p.key_dim
    ),
    # Per (row, state): dS_i += (w do)^T q (2KV).
    "_read_state_bwd_memory_kernel": lambda p, launch: _memory_major_read(p, launch, 2 * p.state),
    # Per (row, visible key): the score q k (2K) and the weighted value (2V); per (row,
    # memory) the gate logit (2K).
    "_read_attention_fwd_kernel": lambda p, launch: _key_read(
        p, launch, 2 * (p.key_dim + p.value_dim), 2 * p.key_dim
    ),
    # Per (row, visible key): the score, <do, v> and X += c <do, v> k (2K + 2V + 2K).
    "_read_attention_bwd_query_kernel": lambda p, launch: _key_read(
        p, launch, 2 * (2 * p.key_dim + p.value_dim), 2 * p.key_dim
    ),
    # Per (key, reading row): the score and <do, v> again, then dk and dv (2 (2K + 2V)).
    "_read_attention_bwd_key_kernel": lambda p, launch: _key_read(
        p, launch, 4 * (p.key_dim + p.value_dim), 0
    ),
    # The delta rules (WY form, chunk C): per token, A = beta K K^T (2CK), the triangular
    # solve (about 2C^2), w = T K and u = T V (2CK + 2CV).
    "_delta_wy_kernel": lambda p, launch: Cost(
        2 * p.rows * p.chunk * (2 * p.key_dim + p.value_dim + p.chunk), launch.all_bytes()
    ),
    # v_new = u - w S^T (2KV), then S += k^T v_new (2KV), per token.
    "_delta_state_fwd_kernel": lambda p, launch: Cost(4 * p.rows * p.state, launch.all_bytes()),
    # o = q S^T + causal(q k^T) v_new: as the linear memory's output.
    "_delta_output_fwd_kernel": lambda p, launch: Cost(
        2 * p.rows * (p.state + p.chunk * (p.key_dim + p.value_dim)), launch.all_bytes()
    ),
    # Backwards: dS += q^T do - w^T dv_new, dv_new = k dS (three state-sized dots per token).
    "_delta_state_bwd_kernel": lambda p, launch: Cost(6 * p.rows * p.state, launch.all_bytes()),
    # dq, dk, dv, dbeta (and dg): four state-sized dots and the chunk's [C, C] products
    # through the output and the WY transform, about four per side.
    "_delta_chunk_bwd_kernel": lambda p, launch: Cost(
        2 * p.rows * (4 * p.state + 4 * p.chunk * (p.key_dim + p.value_dim + p.chunk)),
        launch.all_bytes(),
    ),
    # The gate's key sums: a running sum (K adds per row) and the online logit (2K per row);
    # the backward makes the sums again for the connector's gradient (3K) and the suffix sums
    # for the keys' (4K). dk and d_conn are read and written in place; conn is read by both
    # walks over a run.
    "_key_sums_fwd_kernel": lambda p, launch: Cost(3 * p.rows * p.key_dim, launch.all_bytes()),
    "_key_sums_bwd_kernel": lambda p, launch: Cost(
        7 * p.rows * p.key_dim,
        launch.all_bytes() + launch.size("dk") + launch.size("d_conn") + launch.size("conn"),
    ),
    # ssc's grouped sparse read. Routing: the gate logit of every visible memory (2K each).
    "_route_kernel": lambda p, launch: Cost(2 * p.key_dim * p.visible_pairs, launch.all_bytes()),
    # Per pair: r = q S^T (2KV), written weighted ([pairs, V] fp32).
    "_grouped_read_fwd_kernel": lambda p, launch: _grouped_read(p, launch, 2 * p.state, ("q",)),
    # Per row: the online read and its pairs' reads summed (elementwise only).
    "_mix_fwd_kernel": lambda p, launch: Cost(0, launch.all_bytes()),
    # Per pair: r = q S^T and do S (2KV each).
    "_grouped_read_bwd_kernel": lambda p, launch: _grouped_read(
        p, launch, 4 * p.state, ("q", "do")
    ),
    # Per pair: the connector's gradient da d (2K); the rest elementwise per row.
    "_mix_bwd_kernel": lambda p, launch: Cost(2 * p.key_dim * p.read_pairs, launch.all_bytes()),
    # Per pair: dS += (w do)^T q (2KV) and the descriptor's gradient da u (2K).
    "_memory_bwd_kernel": lambda p, launch: _grouped_read(
        p, launch, 2 * p.state + 2 * p.key_dim, ("q", "conn", "do")
    ),
}


def kernel_cost(name: str, problem: Problem, launch: dict[str, Any]) -> Cost | None:
    """The cost of one launch of kernel `name`, or None without a formula (or when the
    formula's arguments are not among the launch's: the kernel changed)."""
    formula = FORMULAS.get(name)
    if formula is None:
        return None
    try:
        return formula(problem, LaunchFacts(launch))
    except KeyError:
        return None


def compute_peak(card: Card, dots: list[tuple[str, str]]) -> float:
    """The FLOP rate of a kernel's slowest dot path: (kind, operand dtype) per dot."""
    if not dots or any(kind == "fma" for kind, _ in dots):
        return card.fp32
    if any(operand in ("f32", "tf32") for _, operand in dots):
        return card.tensor_tf32
    return card.tensor_16bit


def roofline_seconds(cost: Cost, card: Card, peak: float) -> float:
    """The least time the work can take: compute- or memory-bound, whichever is slower."""
    return max(cost.flops / peak, cost.bytes / card.bandwidth)
