"""Rules between spec fields that a per-field schema cannot express.

Each rule names the field it concerns, so the loader can point at its line.
`resolve` then fills the defaults that depend on other fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from mcgen.spec.schema import (
    DECAY_RECURRENCES,
    DEEP_RECURRENCES,
    DELTA_RECURRENCES,
    GATED_AGGREGATIONS,
    DeepMemory,
    Spec,
)

DEFAULT_TOP_K = 4
# Recurrences whose cached memories are decayed sums of v_j k_j^T, so that reading them
# can also be done against the keys (attention form, docs/method.md section 7).
ATTENTION_FORM_RECURRENCES = ("linear", "decay")
DEFAULT_DECAY_NORMALIZER = 16.0
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
    seg = spec.cache.segments
    given_seg = seg.model_fields_set
    if seg.kind in ("constant", "logarithmic"):
        if seg.length is None:
            out.append(_v("cache.segments", f"segments of kind {seg.kind} need a `length`"))
        if "boundaries" in given_seg:
            out.append(_v("cache.segments.boundaries", f"does not apply to kind {seg.kind}"))
    elif seg.kind == "explicit":
        if "length" in given_seg:
            out.append(_v("cache.segments.length", "does not apply to kind explicit"))
        if seg.boundaries is None or not seg.boundaries:
            out.append(_v("cache.segments", "explicit segments need a non-empty `boundaries` list"))
        else:
            for i in range(1, len(seg.boundaries)):
                if seg.boundaries[i] <= seg.boundaries[i - 1]:
                    out.append(
                        _v(
                            f"cache.segments.boundaries.{i}",
                            "boundaries must be strictly increasing, got "
                            f"{seg.boundaries[i - 1]} then {seg.boundaries[i]}",
                        )
                    )
                    break
    else:  # none
        for field in ("length", "boundaries"):
            if field in given_seg:
                out.append(_v(f"cache.segments.{field}", "does not apply to kind none"))

    agg = spec.aggregation
    given_agg = agg.model_fields_set
    if agg.kind != "ssc" and "top_k" in given_agg:
        out.append(_v("aggregation.top_k", f"applies to kind ssc only, not {agg.kind}"))
    if agg.kind not in GATED_AGGREGATIONS:
        for field in ("connector", "pool", "gate_scale"):
            if field in given_agg:
                out.append(
                    _v(
                        f"aggregation.{field}",
                        f"applies to gated aggregations (grm, soup, ssc) only, not {agg.kind}",
                    )
                )

    rec = spec.memory.recurrence
    if rec not in DECAY_RECURRENCES and "decay_normalizer" in spec.layer.model_fields_set:
        out.append(
            _v(
                "layer.decay_normalizer",
                f"recurrence {rec} has no decay g; this applies to decay and gated_delta only",
            )
        )

    out += _deep_rules(spec)
    out += _size_rules(spec)

    chunk = spec.compute.chunk_size
    if chunk & (chunk - 1):
        out.append(_v("compute.chunk_size", f"must be a power of two, got {chunk}"))
    if spec.compute.read_form == "attention" and rec not in ATTENTION_FORM_RECURRENCES:
        out.append(
            _v(
                "compute.read_form",
                f"attention form needs a memory that is a decayed sum of v k^T "
                f"(linear or decay), not {rec}",
            )
        )
    return out


def _deep_rules(spec: Spec) -> list[RuleViolation]:
    mem = spec.memory
    if mem.recurrence not in DEEP_RECURRENCES:
        if "deep" in mem.model_fields_set:
            return [
                _v("memory.deep", f"applies to deep memories (dla, titans), not {mem.recurrence}")
            ]
        return []
    out = []
    if mem.key_dim != mem.value_dim:
        out.append(
            _v(
                "memory.value_dim",
                f"a deep memory M(x) = x + MLP(x) maps keys to values: value_dim must equal "
                f"key_dim ({mem.key_dim}), got {mem.value_dim}",
            )
        )
    deep = mem.deep
    if deep is None:
        return out
    if mem.recurrence == "dla":
        for field in ("momentum", "decay"):
            if field in deep.model_fields_set:
                out.append(_v(f"memory.deep.{field}", "applies to titans only, not dla"))
    m = deep.minibatch
    seg = spec.cache.segments
    lengths = []
    if seg.kind in ("constant", "logarithmic") and seg.length is not None:
        lengths = [seg.length]
    elif seg.kind == "explicit" and seg.boundaries:
        lengths = list(seg.boundaries)  # every boundary must fall on a mini-batch edge
    bad = [n for n in lengths if n % m]
    if bad:
        out.append(
            _v(
                "memory.deep.minibatch",
                f"must divide the segment length{'s' if len(lengths) > 1 else ''} "
                f"(a mini-batch never straddles a segment end): {m} does not divide {bad[0]}",
            )
        )
    return out


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
    mem = spec.memory
    if mem.recurrence not in DEEP_RECURRENCES:
        sizes = f"heads {mem.heads} x key_dim {mem.key_dim} x value_dim {mem.value_dim}"
        return mem.heads * mem.key_dim * mem.value_dim, sizes
    per_head = _deep_weights_per_head(spec)
    return mem.heads * per_head, f"heads {mem.heads} x {per_head:,} MLP weights"


def layer_weights(spec: Spec) -> int:
    """The weights of MCLayer's projections (q, k, v, u where used, out) and, for a deep
    memory, its initial MLP; the per-head scalar projections are left out (small)."""
    mem = spec.memory
    deep = mem.recurrence in DEEP_RECURRENCES
    value_dim = mem.key_dim if deep else mem.value_dim
    widths = 2 * mem.key_dim + 2 * value_dim  # q, k; v, out
    agg = spec.aggregation
    if agg.kind in GATED_AGGREGATIONS and agg.connector == "separate":
        widths += mem.key_dim  # u
    weights = spec.layer.d_model * mem.heads * widths
    if deep:
        weights += mem.heads * _deep_weights_per_head(spec)
    return weights


def _deep_weights_per_head(spec: Spec) -> int:
    # Imported here: mcgen.ir.graph imports the spec package, which imports this module.
    from mcgen.ir.graph import deep_params

    mem = spec.memory
    deep = mem.deep or DeepMemory()
    return deep_params(deep.depth, mem.key_dim, deep.expansion * mem.key_dim, mem.key_dim)


def _gib(numbers: int) -> str:
    return f"{numbers * FLOAT32_BYTES / (1 << 30):,.3g} GiB"


def resolve(spec: Spec) -> Spec:
    """Fill the defaults that depend on other fields; the result is what gets hashed and built."""
    agg_updates: dict[str, object] = {}
    if spec.aggregation.kind == "ssc" and spec.aggregation.top_k is None:
        agg_updates["top_k"] = DEFAULT_TOP_K
    if spec.aggregation.kind in GATED_AGGREGATIONS and spec.aggregation.gate_scale is None:
        agg_updates["gate_scale"] = spec.memory.key_dim**-0.5
    memory = spec.memory
    if memory.recurrence in DEEP_RECURRENCES:
        deep = memory.deep or DeepMemory()
        if memory.recurrence == "titans":
            deep = deep.model_copy(
                update={
                    "momentum": "data" if deep.momentum is None else deep.momentum,
                    "decay": "data" if deep.decay is None else deep.decay,
                }
            )
        memory = memory.model_copy(update={"deep": deep})
    layer_updates: dict[str, object] = {}
    if spec.layer.key_norm == "auto":
        unit_keys = DELTA_RECURRENCES | DEEP_RECURRENCES  # updates well scaled for unit keys only
        layer_updates["key_norm"] = "l2" if spec.memory.recurrence in unit_keys else "none"
    if spec.memory.recurrence in DECAY_RECURRENCES and spec.layer.decay_normalizer is None:
        layer_updates["decay_normalizer"] = DEFAULT_DECAY_NORMALIZER
    return spec.model_copy(
        update={
            "memory": memory,
            "aggregation": spec.aggregation.model_copy(update=agg_updates),
            "layer": spec.layer.model_copy(update=layer_updates),
        }
    )


def _v(dotted: str, message: str) -> RuleViolation:
    path = tuple(int(p) if p.isdigit() else p for p in dotted.split("."))
    return RuleViolation(path, message)
