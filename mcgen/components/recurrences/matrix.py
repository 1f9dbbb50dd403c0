"""What the matrix memories (linear, decay, delta, gated_delta) share: a V x K state per head.

docs/method.md section 3. A read is S q (2KV FLOPs); the chunked scan writes v k^T (2KV per
token) and adds the intra-chunk attention, about chunk * (K + V) per token; a delta rule
also forms S k before writing (2KV more).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from mcgen.components.base import (
    FP32_BYTES,
    CarriedTensor,
    CostContext,
    RateInput,
    RecurrenceComponent,
)

if TYPE_CHECKING:
    from mcgen.ir.ops import Scan
    from mcgen.spec.schema import Spec

# The template name under which a recurrence's own `code` is served (codegen/templates.py).
OWN_CODE_PREFIX = "components/recurrences/"

# The rate inputs more than one matrix recurrence reads.
LOG_DECAY = RateInput(
    "g",
    "the log decay (<= 0)",
    projection="F.logsigmoid({z}) / {normalizer}",
    sample="F.logsigmoid({z} + {head_bias})",  # even heads forget slowly, odd heads fast
)
WRITE_STRENGTH = RateInput(
    "beta",
    "the write strength in (0, 1)",
    projection="torch.sigmoid({z})",
    sample="torch.sigmoid({z})",
)


class MatrixRecurrence(RecurrenceComponent):
    memory = "matrix"
    # The per-token rate inputs its update reads, in the op's signature order.
    inputs: ClassVar[tuple[RateInput, ...]] = ()
    # Tensors its decode cache holds beside the memory (MCCache's fields).
    carried: ClassVar[tuple[CarriedTensor, ...]] = ()
    # Its own code pieces: the source of a Jinja template of macros that fill the holes of
    # the matrix skeletons (reference.py, backend_torch.py; SHARED_CODE names them). None:
    # the pieces linear, decay, delta and gated_delta share, in SHARED_CODE.
    code: ClassVar[str | None] = None
    SHARED_CODE: ClassVar[str] = "package/recurrences/matrix.jinja"

    @property
    def code_template(self) -> str:
        """The template whose macros are its code pieces (codegen/templates.py serves a
        component's own `code` as OWN_CODE_PREFIX + its name)."""
        return self.SHARED_CODE if self.code is None else OWN_CODE_PREFIX + self.name

    @property
    def decays(self) -> bool:
        """The state is multiplied by exp(g_t) each token before the write."""
        return LOG_DECAY in self.inputs

    def rate_inputs(self, scan: Scan) -> tuple[str, ...]:
        return self.possible_inputs()

    def possible_inputs(self) -> tuple[str, ...]:
        return tuple(rate.name for rate in self.inputs)

    def state_shape(self, spec: Spec) -> str:
        return "[V,K]"

    def state_per_head(self, spec: Spec) -> tuple[int, str]:
        mem = spec.memory
        return mem.key_dim * mem.value_dim, f"key_dim {mem.key_dim} x value_dim {mem.value_dim}"

    def state_numbers(self, scan: Scan) -> int:
        dims = scan.state_dims
        return dims["K"] * dims["V"]

    def scan_cost(self, ctx: CostContext) -> tuple[float, float]:
        kv = ctx.key_dim * ctx.value_dim
        flops = 2 * kv + ctx.chunk * (ctx.key_dim + ctx.value_dim)
        if self.delta_rule:
            flops += 2 * kv
        moved = 2 * FP32_BYTES * kv * ctx.n_chunks * ctx.lanes  # load + store per chunk
        return flops, moved
