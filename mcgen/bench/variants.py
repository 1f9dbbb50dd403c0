"""Build the package a benchmark times: a spec, optionally at other sizes, into a scratch folder.

The spec file is validated as written first (its errors point at its own lines); then
its YAML is copied with the overridden fields (segment length, heads, key and value
dimensions) and built with mcgen's own build function. Fields derived from others
(the gate scale from key_dim) are left for the build to derive again, so a variant is
exactly the spec its author would have written at that size.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import yaml

from mcgen.build import build
from mcgen.components.fields import SEGMENT_LENGTH
from mcgen.components.registry import SEGMENTATIONS
from mcgen.packages import import_package
from mcgen.spec import Spec, SpecError, load_spec

# Segment kinds whose `length` field a sweep may change: the segmentations that read one.
LENGTH_KINDS = tuple(kind.name for kind in SEGMENTATIONS if SEGMENT_LENGTH in kind.fields)


class VariantError(Exception):
    """A spec cannot be built at the requested sizes (the message says why)."""


@dataclass(frozen=True)
class Target:
    """One built package under benchmark."""

    spec_path: Path
    spec: Spec  # resolved, as built
    package: ModuleType
    selftest: ModuleType  # the package's selftest (its make_inputs)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def segment_length(self) -> int | None:
        segments = self.spec.cache.segments
        return segments.length if segments.kind in LENGTH_KINDS else None

    @property
    def dims(self) -> tuple[int, int, int]:
        memory = self.spec.memory
        return memory.heads, memory.key_dim, memory.value_dim

    @property
    def label(self) -> str:
        c = self.segment_length
        return self.name if c is None else f"{self.name} C={c}"


def variant_text(
    spec_path: Path,
    *,
    segment_length: int | None = None,
    heads: int | None = None,
    key_dim: int | None = None,
    value_dim: int | None = None,
) -> str:
    """The spec's YAML with the given fields replaced (the spec must load as written)."""
    loaded = load_spec(spec_path).spec  # SpecError, with the file's own positions
    raw = yaml.safe_load(Path(spec_path).read_text(encoding="utf-8"))
    if segment_length is not None:
        kind = loaded.cache.segments.kind
        if kind not in LENGTH_KINDS:
            raise VariantError(
                f"{spec_path}: segments of kind {kind} have no length to sweep "
                f"(--segment-length applies to {' and '.join(LENGTH_KINDS)} segments)"
            )
        raw["cache"]["segments"]["length"] = segment_length
    for field, value in (("heads", heads), ("key_dim", key_dim), ("value_dim", value_dim)):
        if value is not None:
            raw["memory"][field] = value
    return yaml.safe_dump(raw, sort_keys=False)


def build_target(
    spec_path: Path,
    workdir: Path,
    *,
    segment_length: int | None = None,
    heads: int | None = None,
    key_dim: int | None = None,
    value_dim: int | None = None,
) -> Target:
    """Build `spec_path` with the overrides into a fresh folder under `workdir`, import it."""
    text = variant_text(
        spec_path,
        segment_length=segment_length,
        heads=heads,
        key_dim=key_dim,
        value_dim=value_dim,
    )
    folder = workdir / f"v{len(list(workdir.iterdir())) if workdir.exists() else 0}"
    folder.mkdir(parents=True)
    variant = folder / Path(spec_path).name
    variant.write_text(text, encoding="utf-8")
    try:
        result = build(variant, folder / "out")
    except SpecError as exc:
        sizes = ", ".join(
            f"{name} {value}"
            for name, value in (
                ("segment length", segment_length),
                ("heads", heads),
                ("key_dim", key_dim),
                ("value_dim", value_dim),
            )
            if value is not None
        )
        problems = "; ".join(
            p.message if p.path == "" else f"{p.path}: {p.message}" for p in exc.problems
        )
        raise VariantError(f"{spec_path} at {sizes or 'its own sizes'}: {problems}") from None
    package = import_package(result.path)
    selftest = importlib.import_module(f"{package.__name__}.selftest")
    return Target(Path(spec_path), result.spec, package, selftest)
