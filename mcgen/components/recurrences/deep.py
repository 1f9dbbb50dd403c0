"""What the deep memories (dla, titans) share: the weights of an MLP per head.

docs/method.md section 6. The memory is M(x) = x + W_L act(... act(W_1 x)), P weights per
head, trained inside the forward pass by gradient steps on an inner loss at rate theta_t
(the spec's `lr`). A read is a forward pass of the MLP, 2P FLOPs. Per token the scan takes
the inner gradient at k_t (forward, then backward to the weights and to the hidden
activations: 3 * 2P) and steps: `step_flops` * P (dla 2: W <- W - theta g; titans 4: it
also keeps the momentum S <- eta S - theta g and decays W <- (1 - alpha) W + S).
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import TYPE_CHECKING, Any, ClassVar

from mcgen.components.base import FP32_BYTES, CostContext, FieldProblem, RecurrenceComponent
from mcgen.components.sections import ACTIVATIONS, DeepMemory
from mcgen.ir.errors import IRError

if TYPE_CHECKING:
    from mcgen.ir.ops import Scan
    from mcgen.spec.schema import Spec

# Which op input carries each rate when the spec gives it as "data" (per token, [B,T,H]):
# theta_t is beta, titans' momentum eta_t is eta, its decay log(1 - alpha_t) is g.
RATE_INPUT = {"lr": "beta", "momentum": "eta", "decay": "g"}


def deep_params(depth: int, key_dim: int, hidden: int, value_dim: int) -> int:
    """Weights per head of the MLP memory: K*V at depth 1, else K*Dh + (depth-2)*Dh*Dh + Dh*V."""
    if depth < 1:
        raise ValueError(f"an MLP memory has depth >= 1, got {depth}")
    if depth == 1:
        return key_dim * value_dim
    return key_dim * hidden + (depth - 2) * hidden * hidden + hidden * value_dim


def deep_factor_numbers(depth: int, key_dim: int, hidden: int, value_dim: int) -> int:
    """Numbers in one token's inner gradient kept as its factors: a layer's gradient is the
    outer product of its output error and its input, so each layer's two widths."""
    widths = [key_dim, *[hidden] * (depth - 1), value_dim]
    return sum(a + b for a, b in pairwise(widths))


def deep_state_shape(depth: int) -> str:
    """The MLP's layer widths in symbols: `MLP K->Dh->V (depth 2)`."""
    return "MLP " + "->".join(["K", *["Dh"] * (depth - 1), "V"]) + f" (depth {depth})"


class DeepRecurrence(RecurrenceComponent):
    memory = "deep"
    default_key_norm = "l2"  # the inner steps are well scaled for unit keys only
    # The inner loop's rates it has (lr always; titans also momentum and decay): a rate it
    # lacks is 0, and the spec may not give it.
    rates: ClassVar[tuple[str, ...]] = ("lr",)
    # titans: the squared loss ||M(k) - v||^2 (DeepPlan.squared_loss); dla: the linear loss
    # -<M(k), v>.
    squared_loss: ClassVar[bool] = False
    step_flops: ClassVar[int] = 2  # FLOPs per weight of one inner step

    def _deep(self, spec: Spec) -> DeepMemory:
        return spec.memory.deep or DeepMemory()  # a resolved spec always has it

    def rate_inputs(self, scan: Scan) -> tuple[str, ...]:
        return tuple(name for rate, name in RATE_INPUT.items() if getattr(scan, rate) == "data")

    def possible_inputs(self) -> tuple[str, ...]:
        return tuple(name for rate, name in RATE_INPUT.items() if rate in self.rates)

    def scan_slots(self, scan: Scan) -> set[str]:
        return {"weights", *self.rate_inputs(scan)}  # weights: the initial MLP per head

    def state_shape(self, spec: Spec) -> str:
        return deep_state_shape(self._deep(spec).depth)

    def params(self, spec: Spec) -> int:
        mem, deep = spec.memory, self._deep(spec)
        return deep_params(deep.depth, mem.key_dim, deep.expansion * mem.key_dim, mem.value_dim)

    def scan_attributes(self, spec: Spec) -> dict[str, Any]:
        """Rates stay as the spec gives them: a float, "data" (an op input), or None for a
        rate this memory lacks."""
        deep = self._deep(spec)
        return {
            "depth": deep.depth,
            "hidden": deep.expansion * spec.memory.key_dim,
            "activation": deep.activation,
            "minibatch": deep.minibatch,
            "lr": deep.lr,
            "momentum": deep.momentum,
            "decay": deep.decay,
        }

    def state_per_head(self, spec: Spec) -> tuple[int, str]:
        per_head = self.weights_per_head(spec)
        return per_head, f"{per_head:,} MLP weights"

    def value_width(self, spec: Spec) -> int:
        return spec.memory.key_dim  # M maps keys to values of the same width

    def weights_per_head(self, spec: Spec) -> int:
        mem, deep = spec.memory, self._deep(spec)
        return deep_params(deep.depth, mem.key_dim, deep.expansion * mem.key_dim, mem.key_dim)

    def rules(self, spec: Spec) -> list[FieldProblem]:
        mem = spec.memory
        if mem.key_dim == mem.value_dim:
            return []
        return [
            (
                "memory.value_dim",
                f"a deep memory M(x) = x + MLP(x) maps keys to values: value_dim must equal "
                f"key_dim ({mem.key_dim}), got {mem.value_dim}",
            )
        ]

    def segment_rules(self, spec: Spec, end_steps: list[int]) -> list[FieldProblem]:
        if spec.memory.deep is None:
            return []
        m = spec.memory.deep.minibatch
        bad = [n for n in end_steps if n % m]
        if not bad:
            return []
        return [
            (
                "memory.deep.minibatch",
                f"must divide the segment length{'s' if len(end_steps) > 1 else ''} "
                f"(a mini-batch never straddles a segment end): {m} does not divide {bad[0]}",
            )
        ]

    def check_scan(self, node: str, scan: Scan) -> None:
        depth, hidden, params = scan.depth, scan.hidden, scan.params
        for key in ("depth", "hidden", "minibatch"):
            value = getattr(scan, key)
            if not isinstance(value, int) or value < 1:
                raise IRError(f"scan {node!r}: {key} must be a positive integer, got {value!r}")
        if scan.activation not in ACTIVATIONS:
            raise IRError(f"scan {node!r}: unknown activation {scan.activation!r}")
        dims = scan.state_dims or {}
        kdim, vdim = dims.get("K"), dims.get("V")
        if not isinstance(kdim, int) or kdim != vdim:
            raise IRError(
                f"scan {node!r}: a deep memory maps keys to values (M(x) = x + MLP(x)), so K "
                f"must equal V, got {dims!r}"
            )
        want = deep_params(depth, kdim, hidden, vdim)
        if params != want:
            raise IRError(
                f"scan {node!r}: an MLP of depth {depth}, K={kdim}, Dh={hidden} has {want} "
                f"weights per head, not params={params!r}"
            )
        for rate in RATE_INPUT:
            value = getattr(scan, rate)
            if rate not in self.rates:
                if value is not None:
                    raise IRError(f"scan {node!r}: {self.name} has no {rate}, got {rate}={value!r}")
                continue
            if not _is_rate(value, fraction=rate != "lr"):
                bound = "in [0, 1)" if rate != "lr" else ">= 0"
                raise IRError(
                    f"scan {node!r}: {rate} must be 'data' or a number {bound}, got {value!r}"
                )

    # --- cost ---

    def state_numbers(self, scan: Scan) -> int:
        params = scan.params
        if not isinstance(params, int):
            raise IRError("cost: a deep memory's scan needs `params`, its weights per head")
        return params

    @property
    def has_momentum(self) -> bool:
        """Its steps keep a momentum S and decay the weights (titans); else plain steps."""
        return "momentum" in self.rates

    def keeps_momentum(self, scan: Scan) -> bool:
        """Whether the momentum S is state (a constant 0 momentum makes S_t just the step)."""
        return self.has_momentum and scan.momentum != 0

    def scan_cost(self, ctx: CostContext) -> tuple[float, float]:
        flops = 3 * 2 * ctx.state + self.step_flops * ctx.state
        buffers = 2 if self.keeps_momentum(ctx.scan) else 1  # the weights, and the momentum
        return flops, 2 * FP32_BYTES * ctx.state * buffers * ctx.n_chunks * ctx.lanes

    def held_numbers(self, ctx: CostContext) -> tuple[int, int]:
        """Decode: the momentum, and the weights at the current mini-batch's start (its
        gradients are taken there); training: a mini-batch's gradients, held as their
        factors (the torch backend never forms the per-token weights), and titans' three
        mixing matrices of momentum and decay."""
        scan = ctx.scan
        minibatch = int(scan.minibatch or 1)
        decode = ctx.state * (int(self.keeps_momentum(scan)) + int(minibatch > 1))
        if minibatch == 1:  # one token's step at a time: nothing held across tokens
            return decode, 0
        factors = deep_factor_numbers(scan.depth, ctx.key_dim, scan.hidden, ctx.value_dim)
        mixes = 3 * minibatch * minibatch if self.has_momentum else 0
        return decode, minibatch * factors + mixes


def _is_rate(value: object, *, fraction: bool) -> bool:
    """'data', or a finite number >= 0 (and < 1 for a fraction: momentum, decay)."""
    if value == "data":
        return True
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value >= 0 and (value < 1 or not fraction)
