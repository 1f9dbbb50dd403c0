"""Shared fixtures: build tiny specs into temporary packages and import them."""

from __future__ import annotations

import os
from pathlib import Path

# Triton kernels run under the interpreter on this CPU-only machine; the variable must be
# set before any kernel is defined, so before a generated package imports its kernels.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from spec_helpers import spec_text

from mcgen.codegen.package import render_package
from mcgen.packages import import_package
from mcgen.passes.pipeline import compile_spec
from mcgen.spec import parse_spec

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def build_tiny(tmp_path_factory):
    """build_tiny(**fields) -> the imported package of a tiny spec (cached per spec text)."""
    built: dict[str, object] = {}
    root = tmp_path_factory.mktemp("tiny_packages")

    def build(**fields):
        text = spec_text(**fields)
        if text not in built:
            spec = parse_spec(text, "tiny.yaml")
            package = render_package(spec, compile_spec(spec).plan, command="mcgen build tiny.yaml")
            path = package.write(root / f"p{len(built)}")
            built[text] = import_package(path)
        return built[text]

    return build


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and CI shares its cores between workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
