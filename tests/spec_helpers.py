"""Small YAML specs for the tests: one template, keyword fields for what a test varies."""

from __future__ import annotations

import sys

from mcgen.components.registry import RECURRENCES
from mcgen.spec import Spec, parse_spec

# Every registered matrix-memory recurrence: a new one is covered by the tests that take these.
MATRIX_RECURRENCES = [c.name for c in RECURRENCES if c.memory == "matrix"]

# Segmentations by name, as raw YAML flow mappings for `spec_text(segments=...)`.
SEGMENTS = {
    "constant": "{kind: constant, length: 4}",
    "logarithmic": "{kind: logarithmic, length: 2}",
    "explicit": "{kind: explicit, boundaries: [3, 7, 12]}",
    "none": "{kind: none}",
}


def spec_text(
    *,
    name: str = "tiny",
    recurrence: str = "linear",
    segments: str = "{kind: constant, length: 8}",
    init: str = "checkpoint",
    aggregation: str = "grm",
    aggregation_extra: str = "",
    heads: int = 2,
    key_dim: int = 8,
    value_dim: int = 8,
    chunk_size: int | None = 4,
    d_model: int = 16,
    deep: str | None = None,
    read_form: str | None = None,
) -> str:
    """The YAML of a spec. `aggregation_extra` follows the kind inside the mapping
    (", top_k: 3"); `chunk_size=None` leaves out `compute`, so the schema default holds;
    `deep`, a YAML flow mapping ("{depth: 1, lr: 0.1}"), becomes `memory.deep`;
    `read_form` ("state" or "attention") becomes `compute.read_form`."""
    compute_fields = [] if chunk_size is None else [f"chunk_size: {chunk_size}"]
    if read_form is not None:
        compute_fields.append(f"read_form: {read_form}")
    compute = f"compute: {{{', '.join(compute_fields)}}}\n" if compute_fields else ""
    deep_field = "" if deep is None else f", deep: {deep}"
    return (
        f"name: {name}\n"
        f"memory: {{recurrence: {recurrence}, heads: {heads}, key_dim: {key_dim}, "
        f"value_dim: {value_dim}{deep_field}}}\n"
        f"cache: {{segments: {segments}, init: {init}}}\n"
        f"aggregation: {{kind: {aggregation}{aggregation_extra}}}\n"
        f"layer: {{d_model: {d_model}}}\n"
        f"{compute}"
    )


def make_spec(**fields) -> Spec:
    """parse_spec(spec_text(**fields))."""
    return parse_spec(spec_text(**fields))


def calls_made(work, limit: int | None = None) -> int:
    """Python and C calls made while running work(): a count of work, not a time (stops it
    with RuntimeError past `limit`, when given)."""
    count = [0]

    def tally(frame, event, arg) -> None:
        count[0] += 1
        if limit is not None and count[0] > limit:
            raise RuntimeError(f"more than {limit} calls")

    sys.setprofile(tally)
    try:
        work()
    finally:
        sys.setprofile(None)
    return count[0]
