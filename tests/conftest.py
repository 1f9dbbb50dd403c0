"""Shared fixtures: build tiny specs into temporary packages and import them."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcgen.codegen.package import render_package
from mcgen.packages import import_package
from mcgen.passes.pipeline import compile_spec
from mcgen.spec import parse_spec

REPO = Path(__file__).resolve().parent.parent


def tiny_spec_text(
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
    chunk_size: int = 4,
) -> str:
    return (
        f"name: {name}\n"
        f"memory: {{recurrence: {recurrence}, heads: {heads}, key_dim: {key_dim}, "
        f"value_dim: {value_dim}}}\n"
        f"cache: {{segments: {segments}, init: {init}}}\n"
        f"aggregation: {{kind: {aggregation}{aggregation_extra}}}\n"
        "layer: {d_model: 16}\n"
        f"compute: {{chunk_size: {chunk_size}}}\n"
    )


@pytest.fixture(scope="session")
def build_tiny(tmp_path_factory):
    """build_tiny(**fields) -> the imported package of a tiny spec (cached per spec text)."""
    built: dict[str, object] = {}
    root = tmp_path_factory.mktemp("tiny_packages")

    def build(**fields):
        text = tiny_spec_text(**fields)
        if text not in built:
            spec = parse_spec(text, "tiny.yaml")
            package = render_package(spec, compile_spec(spec).plan, command="mcgen build tiny.yaml")
            path = package.write(root / f"p{len(built)}")
            built[text] = import_package(path)
        return built[text]

    return build
