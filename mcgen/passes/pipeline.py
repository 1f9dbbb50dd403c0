"""The pass pipeline: spec -> IR -> canonical, costed IR -> plan.

Order matters. soup_to_grm first, so a soup spec gets the later rewrites grm gets.
linear_attention before dead_cache, since it is what turns a residual cache into a dead
one. ssc_to_grm before dead_cache, which would otherwise see an ssc gate it does not need
to know about. Validation brackets the rewrites so a broken rewrite fails here, by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import networkx as nx

from mcgen.ir.graph import lower
from mcgen.ir.plan import Plan, plan_from_ir
from mcgen.passes.cost import annotate_cost
from mcgen.passes.dead_cache import dead_cache
from mcgen.passes.linear_attention import linear_attention
from mcgen.passes.read_form import read_form
from mcgen.passes.soup_to_grm import soup_to_grm
from mcgen.passes.ssc_to_grm import ssc_to_grm
from mcgen.passes.validate import validate_ir
from mcgen.spec.schema import Spec

DEFAULT_SEQ_LEN = 4096


@dataclass(frozen=True)
class Pass:
    """One step of the pipeline. `run(graph, seq_len)`; only the cost pass uses seq_len."""

    name: str
    run: Callable[[nx.DiGraph, int], nx.DiGraph]


def _structural(fn: Callable[[nx.DiGraph], nx.DiGraph]) -> Callable[[nx.DiGraph, int], nx.DiGraph]:
    def run(graph: nx.DiGraph, seq_len: int) -> nx.DiGraph:
        return fn(graph)

    return run


def _cost(graph: nx.DiGraph, seq_len: int) -> nx.DiGraph:
    return annotate_cost(graph, seq_len)


PASSES: list[Pass] = [
    Pass("validate", _structural(validate_ir)),
    Pass("soup_to_grm", _structural(soup_to_grm)),
    Pass("linear_attention", _structural(linear_attention)),
    Pass("ssc_to_grm", _structural(ssc_to_grm)),
    Pass("dead_cache", _structural(dead_cache)),
    Pass("validate", _structural(validate_ir)),
    Pass("read_form", read_form),
    Pass("annotate_cost", _cost),
]


def trace_passes(graph: nx.DiGraph, seq_len: int = DEFAULT_SEQ_LEN) -> list[tuple[str, nx.DiGraph]]:
    """The graph after each pass, in order, for tools that show every step."""
    steps: list[tuple[str, nx.DiGraph]] = []
    for step in PASSES:
        graph = step.run(graph, seq_len)
        steps.append((step.name, graph))
    return steps


def run_passes(graph: nx.DiGraph, seq_len: int = DEFAULT_SEQ_LEN) -> tuple[nx.DiGraph, list[str]]:
    """Run every pass; returns the final graph and the notes of what was rewritten."""
    final = trace_passes(graph, seq_len)[-1][1]
    return final, list(final.graph.get("notes", []))


@dataclass(frozen=True)
class CompiledSpec:
    spec: Spec
    before: nx.DiGraph  # as lowered, faithful to the spec
    after: nx.DiGraph  # canonical and costed
    plan: Plan

    @property
    def notes(self) -> list[str]:
        return list(self.after.graph.get("notes", []))


def compile_spec(spec: Spec, seq_len: int = DEFAULT_SEQ_LEN) -> CompiledSpec:
    before = lower(spec)
    after, _ = run_passes(before, seq_len)
    return CompiledSpec(spec=spec, before=before, after=after, plan=plan_from_ir(after))
