"""The plan: what the canonical IR asks the generated package to compute.

Codegen reads only this (never the raw spec), so every rewrite made by a pass is
what the templates render. The reference, by contrast, transcribes the spec as the
user wrote it: comparing the two validates the passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import networkx as nx

from mcgen.components.base import (
    AggregationComponent,
    RecurrenceComponent,
    SegmentationComponent,
)
from mcgen.components.recurrences.deep import DeepRecurrence
from mcgen.components.registry import (
    AGGREGATIONS,
    RECURRENCES,
    SEGMENTATIONS,
    rate_input_names,
)
from mcgen.ir.errors import IRError
from mcgen.ir.ops import (
    Aggregate,
    DescriptorPool,
    Gate,
    OpT,
    Scan,
    Segmentation,
    nodes_of,
    reads_from,
)


@dataclass(frozen=True)
class DeepPlan:
    """The MLP memory of dla / titans (docs/method.md section 6)."""

    depth: int
    hidden: int  # expansion * key_dim
    activation: Literal["gelu", "silu", "relu", "tanh"]
    minibatch: int
    squared_loss: bool  # the inner loss ||M(k) - v||^2 (titans); else -<M(k), v> (dla)
    has_momentum: bool  # the steps keep a momentum and decay the weights (titans); else plain
    lr: float | None  # None: data-dependent (op input beta)
    momentum: float | None  # titans: None = data (op input eta); dla: 0
    decay: float | None  # titans: None = data (op input g = log(1 - alpha)); dla: 0


@dataclass(frozen=True)
class Plan:
    """The names of the components it runs, and what they read. The `*_component`
    properties give each component itself (mcgen/components/), for facts derived from it."""

    recurrence: str  # a registered recurrence's name
    init: Literal["checkpoint", "independent"]
    # Segmentation that the computation needs (after passes; "none" when nothing is cached
    # and nothing is reset).
    segments: str
    segment_length: int | None  # segmentations set by a length (constant, logarithmic)
    boundaries: tuple[int, ...] | None  # explicit
    # Aggregation after canonicalisation: soup appears only for deep memories (for a
    # matrix memory it is grm).
    aggregation: str
    connector: Literal["separate", "query"] | None  # gated aggregations only
    pool: Literal["mean", "sum"] | None  # gated aggregations only
    top_k: int | None  # ssc only
    gate_scale: float | None  # gated aggregations only
    chunk_size: int
    # Which inputs the computation reads: the recurrence's per-token rates (g, beta, ...,
    # in the op's signature order) and the gate's connector u.
    rate_inputs: tuple[str, ...]
    uses_u: bool
    deep: DeepPlan | None = None  # dla and titans
    # How the Triton backend reads cached memories (passes/read_form.py); None: no cached reads
    # or a deep memory.
    read_form: Literal["state", "attention"] | None = None
    # Human-readable notes of what the passes rewrote, in order.
    notes: tuple[str, ...] = field(default=())

    @property
    def uses_g(self) -> bool:
        """The log decay g (a deep memory's: g = log(1 - alpha), its weight decay)."""
        return "g" in self.rate_inputs

    @property
    def uses_beta(self) -> bool:
        """The write strength beta (a deep memory's: its inner learning rate)."""
        return "beta" in self.rate_inputs

    @property
    def uses_eta(self) -> bool:
        """titans' data-dependent momentum eta."""
        return "eta" in self.rate_inputs

    @property
    def recurrence_component(self) -> RecurrenceComponent:
        return RECURRENCES.get(self.recurrence)

    @property
    def aggregation_component(self) -> AggregationComponent:
        return AGGREGATIONS.get(self.aggregation)

    @property
    def segmentation_component(self) -> SegmentationComponent:
        return SEGMENTATIONS.get(self.segments)

    @property
    def caches(self) -> bool:
        """Whether segment-end states are kept and read."""
        return self.aggregation_component.reads_cache

    @property
    def gated(self) -> bool:
        """Whether the aggregation weighs the memories by a gate (reads descriptors)."""
        return self.aggregation_component.gated

    @property
    def selects_top_k(self) -> bool:
        """Each token reads only its top_k cached memories by gate logit (a sparse read)."""
        return self.aggregation_component.selects_top_k

    @property
    def sums_reads(self) -> bool:
        """The cached reads are added to the online one, unweighted."""
        return self.aggregation_component.sums_reads

    @property
    def mixes_weights(self) -> bool:
        """A deep memory's weights are mixed by the gate and the mixture read once."""
        return self.aggregation_component.mixes_weights

    @property
    def segmented(self) -> bool:
        """Whether any segment ends (so that a segment can start again, or be cached)."""
        return self.segmentation_component.has_boundaries


def plan_from_ir(graph: nx.DiGraph) -> Plan:
    """Read the plan off a canonical graph (after the passes), from its op records alone.

    The spec attached to the graph is not read: what the passes rewrote is in the records,
    and the reference alone follows the spec as written.

    Raises `IRError` for a graph the templates cannot render, such as one that still holds
    `soup` on a matrix memory (run the passes first: there it becomes grm). For a deep memory
    soup is its own computation and stays.
    """
    scan = _one(graph, Scan)
    seg = _one(graph, Segmentation)
    agg = _one(graph, Aggregate)
    gate = _maybe_one(graph, Gate)
    pool = _maybe_one(graph, DescriptorPool)
    recurrence = RECURRENCES.find(scan.recurrence)
    if recurrence is None:
        raise IRError(f"recurrence {scan.recurrence!r} is not a registered component")
    deep = _deep_plan(scan, recurrence) if isinstance(recurrence, DeepRecurrence) else None
    if recurrence.memory != graph.graph.get("memory"):
        raise IRError(
            f"graph memory {graph.graph.get('memory')!r} does not match recurrence "
            f"{recurrence.name!r}"
        )
    aggregation = AGGREGATIONS.find(agg.kind)
    if aggregation is None or (deep is None and aggregation.matrix_equivalent is not None):
        raise IRError(
            f"aggregation {agg.kind!r} has no plan for a {graph.graph.get('memory')} memory: "
            "run the passes (soup becomes grm for a matrix memory) first"
        )
    inputs = recurrence.rate_inputs(scan)
    return Plan(
        recurrence=scan.recurrence,
        init=scan.init,
        segments=seg.kind,
        segment_length=seg.length,
        boundaries=seg.boundaries,
        aggregation=agg.kind,
        connector=gate.connector if gate else None,
        pool=pool.pool if pool else None,
        top_k=gate.top_k if gate else None,
        gate_scale=gate.gate_scale if gate else None,
        chunk_size=scan.chunk_size,
        # A deep memory reads g, beta and eta for its data-dependent decay, lr and momentum.
        rate_inputs=tuple(name for name in rate_input_names() if name in inputs),
        # connector `query` reads q for the gate, so no u input is needed.
        uses_u=gate is not None and gate.connector == "separate",
        deep=deep,
        read_form=_read_form(graph),
        notes=tuple(graph.graph.get("notes", [])),
    )


def _read_form(graph: nx.DiGraph) -> Literal["state", "attention"] | None:
    """The form the read_form pass chose for the cached reads; None when it chose none."""
    found = reads_from(graph, "cache")
    if found is None:
        return None
    read = found[1]
    if read.form == "weights" or read.form_reason is None:
        return None
    return read.form


def _deep_plan(scan: Scan, recurrence: DeepRecurrence) -> DeepPlan:
    """The MLP memory of a deep scan; a "data" rate becomes None (an op input), a rate the
    memory lacks 0."""
    for name in ("depth", "hidden", "activation", "minibatch"):
        if getattr(scan, name) is None:
            raise IRError(f"a deep scan needs the attribute {name!r}")

    def rate(name: str) -> float | None:
        value = getattr(scan, name)
        if value == "data":
            return None
        if value is None:
            if name in recurrence.rates:
                raise IRError(f"a {recurrence.name} scan needs a {name} (a number or 'data')")
            return 0.0  # dla: no momentum, no decay
        return float(value)

    return DeepPlan(
        depth=int(scan.depth),
        hidden=int(scan.hidden),
        activation=scan.activation,
        minibatch=int(scan.minibatch),
        squared_loss=recurrence.squared_loss,
        has_momentum=recurrence.has_momentum,
        lr=rate("lr"),
        momentum=rate("momentum"),
        decay=rate("decay"),
    )


def _one(graph: nx.DiGraph, kind: type[OpT]) -> OpT:
    found = _maybe_one(graph, kind)
    if found is None:
        raise IRError(f"a plan needs exactly one {kind.kind_name} node, found none")
    return found


def _maybe_one(graph: nx.DiGraph, kind: type[OpT]) -> OpT | None:
    found = [op for _, op in nodes_of(graph, kind)]
    if len(found) > 1:
        raise IRError(f"a plan needs at most one {kind.kind_name} node, found {len(found)}")
    return found[0] if found else None
