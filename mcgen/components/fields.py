"""The optional spec fields that only some components read, declared once.

A component lists the ones it reads in its `fields`. From those declarations the spec
rules refuse a field given where it does not apply, `resolve` fills its default, and a
search space leaves it out of candidates that would not read it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcgen.components.base import SpecField, in_words
from mcgen.components.sections import DeepMemory

if TYPE_CHECKING:
    from mcgen.spec.schema import Spec

DEFAULT_TOP_K = 4
DEFAULT_DECAY_NORMALIZER = 16.0


def _new_deep_section(spec: Spec) -> DeepMemory:
    return DeepMemory()


def _kind_only(name: str, owners: tuple[str, ...]) -> str:
    return f"does not apply to kind {name}"


# --- segmentations ---
SEGMENT_LENGTH = SpecField("cache.segments.length", _kind_only)
SEGMENT_BOUNDARIES = SpecField("cache.segments.boundaries", _kind_only)

# --- aggregations ---
TOP_K = SpecField(
    "aggregation.top_k",
    lambda name, owners: f"applies to kind {', '.join(owners)} only, not {name}",
    default=lambda spec: DEFAULT_TOP_K,
)


def _gated_only(name: str, owners: tuple[str, ...]) -> str:
    return f"applies to gated aggregations ({', '.join(owners)}) only, not {name}"


CONNECTOR = SpecField("aggregation.connector", _gated_only)
POOL = SpecField("aggregation.pool", _gated_only)
# Logits of unit-scale keys stay O(1) at key_dim^-1/2.
GATE_SCALE = SpecField(
    "aggregation.gate_scale", _gated_only, default=lambda spec: spec.memory.key_dim**-0.5
)
GATE_FIELDS = (CONNECTOR, POOL, GATE_SCALE)

# --- recurrences ---
DECAY_NORMALIZER = SpecField(
    "layer.decay_normalizer",
    lambda name, owners: (
        f"recurrence {name} has no decay g; this applies to {in_words(owners)} only"
    ),
    default=lambda spec: DEFAULT_DECAY_NORMALIZER,
)
DEEP = SpecField(
    "memory.deep",
    lambda name, owners: f"applies to deep memories ({', '.join(owners)}), not {name}",
    default=_new_deep_section,
)


def _deep_rate_only(name: str, owners: tuple[str, ...]) -> str:
    return f"applies to {in_words(owners)} only, not {name}"


# A deep memory's rates besides lr: left out, each is data-dependent (an op input).
DEEP_MOMENTUM = SpecField("memory.deep.momentum", _deep_rate_only, default=lambda spec: "data")
DEEP_DECAY = SpecField("memory.deep.decay", _deep_rate_only, default=lambda spec: "data")
