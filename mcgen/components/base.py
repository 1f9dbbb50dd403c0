"""The component protocol: what each recurrence, aggregation and segmentation declares.

A component is one variant of one kind: the recurrence `decay`, the aggregation `ssc`, the
segmentation `explicit`. Each lives in its own module under mcgen/components/<kinds>/, as a
class with one instance, `COMPONENT`, and declares there what the rest of mcgen asks of it:
the spec fields it reads (with their rules and defaults), the inputs it reads, its cost and
the facts the passes, the plan and codegen test. `mcgen.components.registry` lists them;
nothing else keeps a list of names.

Nothing here imports the spec, the IR or the passes at import time: the spec schema asks
the registry which names exist, so the components come first. Their methods take a spec
or a node's op record (mcgen/ir/ops.py) as arguments.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from mcgen.ir.ops import Scan, Segmentation
    from mcgen.spec.schema import Spec

# What one memory state is: a V x K matrix per head, or the weights of an MLP per head.
MEMORY_KINDS = ("matrix", "deep")
FP32_BYTES = 4

# A broken rule: (the dotted spec field it concerns, the message). The spec loader turns
# the path into the line and column of that field.
FieldProblem = tuple[str, str]


def in_words(names: tuple[str, ...] | list[str], last: str = "and") -> str:
    """`a`, `a and b`, `a, b and c`: names as a sentence lists them."""
    if len(names) <= 1:
        return "".join(names)
    return f"{', '.join(names[:-1])} {last} {names[-1]}"


@dataclass(frozen=True)
class SpecField:
    """An optional spec field that only some components read.

    `elsewhere(name, owners)` is the message for a spec that gives the field although the
    component it chose (`name`) does not read it; `owners` are the components that do.
    `default(spec)`, when there is one, is the value the field takes when left out.
    """

    path: str  # dotted: "aggregation.top_k"
    elsewhere: Callable[[str, tuple[str, ...]], str]
    default: Callable[[Spec], Any] | None = None


@dataclass(frozen=True)
class RateInput:
    """A per-token [B, T, H] input a matrix recurrence reads beside q, k and v.

    `projection` and `sample` are Python expressions of the generated package, with `{z}`
    standing for a [B, T, H] fp32 tensor of pre-activations: MCLayer's projection of x, the
    selftest's standard normals. `{normalizer}` is the spec's layer.decay_normalizer and,
    in `sample`, `{head_bias}` a [H] bias that makes even heads strong and odd heads weak.
    """

    name: str  # the op's argument: "g"
    meaning: str  # "the log decay (<= 0)": the ops' docstring, the export's README
    projection: str  # MCLayer: "F.logsigmoid({z}) / {normalizer}"
    sample: str  # selftest: "F.logsigmoid({z} + {head_bias})"


@dataclass(frozen=True)
class CarriedTensor:
    """An input's value at the last token, [B, H, D], that a recurrence's decode cache holds
    beside its memory (swla's previous key and value: the next token's update reads them)."""

    name: str  # the MCCache field: "last_key"
    source: str  # the input it keeps: "k" or "v"
    meaning: str  # the MCCache docstring's words for it

    @property
    def width(self) -> str:
        """The size of its last dimension, as the generated code names it."""
        return "value_dim" if self.source == "v" else "key_dim"


@dataclass(frozen=True)
class CostContext:
    """What a component's cost formulas read; counts are per head unless named otherwise."""

    key_dim: int
    value_dim: int
    state: int  # numbers in one memory state
    chunk: int  # tokens per chunk of the chunked execution
    n_chunks: int
    lanes: int  # independent (batch, head) sequences
    mean_read: float  # cached memories a token reads, averaged over the sequence
    deep: bool  # the memory is an MLP's weights
    scan: Scan  # the recurrence_scan node's op


class Component(ABC):
    """What every component declares: its name and the optional spec fields it reads."""

    name: ClassVar[str]
    # Optional spec fields only some components of this kind read; this one reads these.
    fields: ClassVar[tuple[SpecField, ...]] = ()

    def rules(self, spec: Spec) -> list[FieldProblem]:
        """The rules this component adds for a spec that chose it (besides field types)."""
        return []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} component {self.name!r}>"


class RecurrenceComponent(Component):
    """How a memory is updated token by token (docs/method.md sections 3 and 6)."""

    memory: ClassVar[str]  # one of MEMORY_KINDS
    # The spec's key_norm `auto` becomes this: l2 where the update is stable for unit keys only.
    default_key_norm: ClassVar[str] = "none"
    # An error-correcting (delta-rule) write: v - S k, weighted by beta.
    delta_rule: ClassVar[bool] = False
    # The state is a plain sum of v k^T: segment states add up to the running one, so
    # residual + independent is causal linear attention (passes/linear_attention.py).
    additive: ClassVar[bool] = False
    # The cached states are decayed sums of v k^T, so they can also be read against the
    # cached keys (compute.read_form attention, docs/method.md section 7).
    attention_form: ClassVar[bool] = False
    # The template of its Triton recurrence kernel; None: no Triton backend (torch only).
    triton_template: ClassVar[str | None] = None

    def segment_rules(self, spec: Spec, end_steps: list[int]) -> list[FieldProblem]:
        """Rules between this memory and the segmentation, given the spec's segment steps
        (the segmentation's end_steps)."""
        return []

    @abstractmethod
    def rate_inputs(self, scan: Scan) -> tuple[str, ...]:
        """The per-token [B,T,H] inputs (g, beta, eta) this scan reads."""

    @abstractmethod
    def possible_inputs(self) -> tuple[str, ...]:
        """Every per-token input a scan of it may read, whatever its spec."""

    def scan_slots(self, scan: Scan) -> set[str]:
        """Every input slot of its recurrence_scan node but k, v and segments."""
        return set(self.rate_inputs(scan))

    @abstractmethod
    def state_shape(self, spec: Spec) -> str:
        """One head's state in symbols, as the IR shows it: `[V,K]`, `MLP K->Dh->V (depth 2)`."""

    def params(self, spec: Spec) -> int | None:
        """Weights per head when the state is an MLP's (the IR's `params`); None otherwise."""
        return None

    def scan_attributes(self, spec: Spec) -> dict[str, Any]:
        """The scan node's attributes beyond the state's, chunk and init."""
        return {}

    def check_scan(self, node: str, scan: Scan) -> None:
        """Raise IRError if a scan's own fields are inconsistent (a matrix scan has none
        beyond those every scan has, which validation checks)."""

    @abstractmethod
    def state_per_head(self, spec: Spec) -> tuple[int, str]:
        """Numbers in one head's memory state, and the sizes that make it, in words."""

    def value_width(self, spec: Spec) -> int:
        """The width of the values it stores and reads."""
        return spec.memory.value_dim

    def weights_per_head(self, spec: Spec) -> int:
        """Weights the layer holds for it beyond the projections (an MLP's initial weights)."""
        return 0

    # --- cost (passes/cost.py) ---

    @abstractmethod
    def state_numbers(self, scan: Scan) -> int:
        """Numbers in one memory state, from the scan node."""

    @abstractmethod
    def scan_cost(self, ctx: CostContext) -> tuple[float, float]:
        """(FLOPs per token and head, bytes moved in all) of the scan."""

    def held_numbers(self, ctx: CostContext) -> tuple[int, int]:
        """Numbers per head it keeps beyond the online and cached states: (decode, training)."""
        return 0, 0


class AggregationComponent(Component):
    """How a token combines its online read with the cached memories' (method section 4)."""

    # Whether the cached memories are read at all (none: no cache).
    reads_cache: ClassVar[bool] = True
    # The gate that weighs the memories (softmax, topk_softmax); None: no gate, so no
    # connector u and no descriptors.
    gate: ClassVar[str | None] = None
    # Adds every cached read to the online one, unweighted (residual).
    sums_reads: ClassVar[bool] = False
    # On a deep memory: mixes the memories' weights with the gate weights and reads the
    # mixture once (soup).
    mixes_weights: ClassVar[bool] = False
    # The aggregation it equals on a matrix memory, where a read is linear in the state
    # (passes/soup_to_grm.py); None: it stays itself.
    matrix_equivalent: ClassVar[str | None] = None
    # The aggregation it equals when top_k covers every cached memory (passes/ssc_to_grm.py).
    full_selection_equivalent: ClassVar[str | None] = None

    @property
    def gated(self) -> bool:
        return self.gate is not None

    @property
    def selects_top_k(self) -> bool:
        """Each token reads only its top_k cached memories by gate logit (a sparse read)."""
        return self.gate == "topk_softmax"

    def aggregate_flops(self, ctx: CostContext) -> float:
        """FLOPs per token and head of the aggregate node (the reads are costed apart)."""
        return 0.0


class SegmentationComponent(Component):
    """Where segments end, and so which memories are cached (docs/method.md section 2)."""

    # Whether any segment boundary exists (none: one segment, nothing cached).
    has_boundaries: ClassVar[bool] = True
    # The template whose macros write its segment rule into the generated package
    # (templates/package/segments/): segment_start, segment_end, nth_segment_end.
    rule_template: ClassVar[str]

    @property
    def reads_length(self) -> bool:
        """Segments are set by the spec's `length` (its SEGMENT_LENGTH constant)."""
        return any(field.path == "cache.segments.length" for field in self.fields)

    @property
    def reads_boundaries(self) -> bool:
        """Segments end at the spec's listed `boundaries` (its BOUNDARIES constant)."""
        return any(field.path == "cache.segments.boundaries" for field in self.fields)

    @abstractmethod
    def ends(self, length: int | None, boundaries: Any, seq_len: int) -> list[int]:
        """End positions of the segments complete within seq_len tokens."""

    def period(self, length: int | None) -> int | None:
        """The step when segments end every `step` tokens (the cost model's closed forms)."""
        return None

    def most_cached(self, segmentation: Segmentation) -> int | None:
        """The most cached segments any token can see whatever the sequence length; None
        when it grows with the sequence."""
        return None

    def end_steps(self, spec: Spec) -> list[int]:
        """Numbers every segment end is a multiple of, for any sequence length: a deep
        memory's mini-batch must divide each (one never straddles a segment end)."""
        return []

    @abstractmethod
    def check_node(self, node: str, segmentation: Segmentation) -> None:
        """Raise IRError if a segmentation's length and boundaries do not fit this kind."""
