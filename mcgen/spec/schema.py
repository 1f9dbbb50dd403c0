"""The spec schema: field names, types and ranges (the contract of docs/design.md).

Pydantic checks types and ranges strictly (no "4" for 4, no unknown keys).
Rules that tie one field to another (top_k only with ssc, ...) live in
`mcgen.spec.rules`, so that every error can point at the field it concerns. The names a
recurrence, aggregation or segmentation may take are those of the registered components
(mcgen/components/registry.py).
"""

from __future__ import annotations

import importlib.util
import keyword
import re
import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PlainValidator, field_validator
from pydantic_core import PydanticCustomError

from mcgen.components.base import in_words
from mcgen.components.registry import AGGREGATIONS, RECURRENCES, SEGMENTATIONS, Kind
from mcgen.components.sections import MAX_FACTOR, DeepMemory, Strict


def _registered(kind: Kind) -> PlainValidator:
    """A name of a registered component of `kind`, checked against the registry when a spec
    is read (so a component added to it is a valid name), with a literal's message."""

    def check(value: object) -> str:
        names = kind.names()
        if isinstance(value, str) and value in names:
            return value
        expected = in_words([repr(name) for name in names], "or")
        raise PydanticCustomError(
            "literal_error", "Input should be {expected}", {"expected": expected}
        )

    return PlainValidator(check)


Recurrence = Annotated[str, _registered(RECURRENCES)]
SegmentKind = Annotated[str, _registered(SEGMENTATIONS)]
Init = Literal["checkpoint", "independent"]
AggregationKind = Annotated[str, _registered(AGGREGATIONS)]
Connector = Literal["separate", "query"]
Pool = Literal["mean", "sum"]
# auto: l2 for the delta rules (their update is stable only for unit keys), none otherwise.
KeyNorm = Literal["auto", "l2", "none"]

_PACKAGE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
# A generated package must not shadow a module that it, or python, imports.
_RESERVED_NAMES = frozenset(sys.stdlib_module_names) | {"torch", "triton", "numpy", "mcgen"}
# What marks a package that mcgen wrote (build or export): rebuilding one is no shadowing.
_MANIFEST = "manifest.json"

# Token positions (segment lengths, boundaries): 2^24 tokens, far past any sequence run.
MAX_POSITION = 1 << 24
MAX_BOUNDARIES = 1 << 16


class Memory(Strict):
    recurrence: Recurrence
    heads: Annotated[int, Field(ge=1, le=1024)]
    key_dim: Annotated[int, Field(ge=1, le=4096)]
    value_dim: Annotated[int, Field(ge=1, le=4096)]
    deep: DeepMemory | None = None  # deep memories (dla, titans) only


class Segments(Strict):
    kind: SegmentKind
    length: Annotated[int, Field(ge=1, le=MAX_POSITION)] | None = None
    boundaries: (
        Annotated[
            list[Annotated[int, Field(ge=1, le=MAX_POSITION)]], Field(max_length=MAX_BOUNDARIES)
        ]
        | None
    ) = None


class Cache(Strict):
    segments: Segments
    init: Init = "checkpoint"


class Aggregation(Strict):
    kind: AggregationKind
    connector: Connector = "separate"
    pool: Pool = "mean"
    top_k: Annotated[int, Field(ge=1, le=1 << 20)] | None = None
    gate_scale: Annotated[float, Field(gt=0, le=MAX_FACTOR, allow_inf_nan=False)] | None = None


class Layer(Strict):
    d_model: Annotated[int, Field(ge=1, le=1 << 16)]
    key_norm: KeyNorm = "auto"
    # g = logsigmoid(x W_g) / decay_normalizer: a larger value keeps the decay near 1.
    decay_normalizer: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None


class Compute(Strict):
    # Tokens per chunk of the chunked torch backend (and, later, the Triton kernels).
    chunk_size: Annotated[int, Field(ge=1, le=4096)] = 64
    # How the Triton backend reads cached memories: q against each cached state (state),
    # or q against the cached segments' keys weighted by the gates (attention); auto lets
    # the cost model choose (docs/method.md section 7).
    read_form: Literal["auto", "state", "attention"] = "auto"


class Spec(Strict):
    name: str
    memory: Memory
    cache: Cache
    aggregation: Aggregation
    layer: Layer
    compute: Compute = Compute()

    @field_validator("name")
    @classmethod
    def _name_is_package(cls, value: str) -> str:
        return check_package_name(value)


def check_package_name(value: str) -> str:
    """`value` if it may name a generated package; ValueError saying why not otherwise."""
    if not _PACKAGE_NAME.fullmatch(value) or keyword.iskeyword(value) or len(value) > 64:
        raise ValueError(
            "must be a lowercase python identifier (letters, digits, underscores; at most "
            "64 characters, not a keyword): it names the generated package, "
            f"got {value[:64]!r}"
        )
    if value in _RESERVED_NAMES or value.startswith("__"):
        raise ValueError(
            f"{value!r} would shadow a python module (or be a dunder name): "
            "it names the generated package; choose another name"
        )
    installed = installed_module(value)
    if installed is not None:
        raise ValueError(
            f"{value!r} would shadow the installed module {value} ({installed}): "
            "it names the generated package; choose another name"
        )
    return value


def installed_module(name: str) -> str | None:
    """Where the importable top-level module `name` lives; None when there is none, or it is
    a namespace package (folders only), or a package that mcgen wrote (it has a manifest)."""
    try:
        found = importlib.util.find_spec(name)  # finds, never runs, a top-level module
    except (ImportError, ValueError):
        return None
    if found is None or found.origin is None:
        return None
    origin = Path(found.origin)
    if origin.name == "__init__.py" and (origin.parent / _MANIFEST).is_file():
        return None
    return found.origin
