"""Rules between spec fields that a per-field schema cannot express.

Each rule names the field it concerns, so the loader can point at its line. The rules
that concern one recurrence, aggregation or segmentation are declared by that component
(mcgen/components/): the optional fields it reads, its own checks and its defaults; here
they are applied to the components a spec chose. `resolve` then fills the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mcgen.components.base import in_words
from mcgen.components.registry import AGGREGATIONS, KINDS, RECURRENCES, SEGMENTATIONS, Kind
from mcgen.spec.schema import Spec

# What a layer may hold and still run: one memory state of all heads at most 256 MiB in
# float32 (a sequence keeps one per cached segment, and training one per chunk: this is
# what bounds them all), and its weights at most 8 GiB.
MAX_STATE_NUMBERS = 1 << 26
MAX_LAYER_WEIGHTS = 1 << 31
FLOAT32_BYTES = 4


@dataclass(frozen=True)
class RuleViolation:
    path: tuple[str | int, ...]
    message: str


def check_rules(spec: Spec) -> list[RuleViolation]:
    out: list[RuleViolation] = []
    for kind in KINDS:
        out += _fields_elsewhere(spec, kind)
        out += [_v(path, message) for path, message in kind.of(spec).rules(spec)]
    steps = SEGMENTATIONS.of(spec).end_steps(spec)
    out += [_v(path, message) for path, message in RECURRENCES.of(spec).segment_rules(spec, steps)]
    out += _size_rules(spec)

    chunk = spec.compute.chunk_size
    if chunk & (chunk - 1):
        out.append(_v("compute.chunk_size", f"must be a power of two, got {chunk}"))
    rec = spec.memory.recurrence
    if spec.compute.read_form == "attention" and not RECURRENCES.get(rec).attention_form:
        readable = in_words([r.name for r in RECURRENCES if r.attention_form], "or")
        out.append(
            _v(
                "compute.read_form",
                f"attention form needs a memory that is a decayed sum of v k^T "
                f"({readable}), not {rec}",
            )
        )
    return out


def _fields_elsewhere(spec: Spec, kind: Kind) -> list[RuleViolation]:
    """The optional fields of `kind` that the spec gives but its component does not read;
    a section given where it does not apply is reported once, not field by field."""
    chosen = kind.of(spec).name
    out: list[RuleViolation] = []
    reported: list[str] = []
    for path, (field, owners) in sorted(kind.fields().items()):
        if chosen in owners or not _given(spec, path):
            continue
        if any(path.startswith(f"{done}.") for done in reported):
            continue
        out.append(_v(path, field.elsewhere(chosen, owners)))
        reported.append(path)
    return out


def _given(spec: Spec, dotted: str) -> bool:
    """Whether the spec, as written, sets the field at `dotted`."""
    *parents, last = dotted.split(".")
    section: Any = spec
    for part in parents:
        section = getattr(section, part, None)
        if section is None:
            return False
    return last in section.model_fields_set


def _size_rules(spec: Spec) -> list[RuleViolation]:
    """Refuse, with the size they would need, layers too large to hold in memory."""
    mem = spec.memory
    out = []
    state, state_sizes = state_numbers(spec)
    if state > MAX_STATE_NUMBERS:
        out.append(
            _v(
                "memory",
                f"one memory state of these sizes holds {state:,} numbers ({state_sizes}; "
                f"{_gib(state)} in float32) per sequence; at most {MAX_STATE_NUMBERS:,} "
                f"({_gib(MAX_STATE_NUMBERS)}) can run: use fewer heads or smaller dimensions",
            )
        )
    weights = layer_weights(spec)
    if weights > MAX_LAYER_WEIGHTS:
        out.append(
            _v(
                "layer",
                f"a layer of these sizes holds {weights:,} weights (d_model {spec.layer.d_model} "
                f"x heads {mem.heads} x its projections; {_gib(weights)} in float32); at most "
                f"{MAX_LAYER_WEIGHTS:,} ({_gib(MAX_LAYER_WEIGHTS)}) can run: make d_model, "
                "heads or the dimensions smaller",
            )
        )
    return out


def state_numbers(spec: Spec) -> tuple[int, str]:
    """Numbers in one memory state of all heads, and the sizes that make it, in words."""
    heads = spec.memory.heads
    per_head, sizes = RECURRENCES.of(spec).state_per_head(spec)
    return heads * per_head, f"heads {heads} x {sizes}"


def layer_weights(spec: Spec) -> int:
    """The weights of MCLayer's projections (q, k, v, u where used, out) and, for a deep
    memory, its initial MLP; the per-head scalar projections are left out (small)."""
    mem = spec.memory
    recurrence = RECURRENCES.of(spec)
    widths = 2 * mem.key_dim + 2 * recurrence.value_width(spec)  # q, k; v, out
    agg = spec.aggregation
    if AGGREGATIONS.of(spec).gated and agg.connector == "separate":
        widths += mem.key_dim  # u
    weights = spec.layer.d_model * mem.heads * widths
    return weights + mem.heads * recurrence.weights_per_head(spec)


def _gib(numbers: int) -> str:
    return f"{numbers * FLOAT32_BYTES / (1 << 30):,.3g} GiB"


def resolve(spec: Spec) -> Spec:
    """Fill the defaults that depend on other fields; the result is what gets hashed and built.

    Each optional field the chosen components read takes its declared default where the spec
    left it out, and key_norm `auto` the recurrence's own.
    """
    for kind in KINDS:
        for field in kind.of(spec).fields:
            if field.default is not None and _value(spec, field.path) is None:
                spec = _with_value(spec, field.path, field.default(spec))
    if spec.layer.key_norm == "auto":
        spec = _with_value(spec, "layer.key_norm", RECURRENCES.of(spec).default_key_norm)
    return spec


def _value(spec: Spec, dotted: str) -> Any:
    value: Any = spec
    for part in dotted.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


def _with_value(model: Any, dotted: str, value: Any) -> Any:
    """A copy of the (frozen) model with the field at `dotted` set to `value`."""
    first, _, rest = dotted.partition(".")
    if rest:
        value = _with_value(getattr(model, first), rest, value)
    return model.model_copy(update={first: value})


def _v(dotted: str, message: str) -> RuleViolation:
    path = tuple(int(p) if p.isdigit() else p for p in dotted.split("."))
    return RuleViolation(path, message)
