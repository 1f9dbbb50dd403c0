"""The component registry is the single source of names: every registered component is a
valid spec choice that lowers, validates, costs and plans, and one registered in a test
becomes a valid spec name without any other file changing."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
from spec_helpers import spec_text

from mcgen.codegen.package import has_triton
from mcgen.components.aggregations.gated import GatedAggregation
from mcgen.components.base import CostContext, SegmentationComponent, in_words
from mcgen.components.fields import DECAY_NORMALIZER, SEGMENT_BOUNDARIES, SEGMENT_LENGTH
from mcgen.components.recurrences.matrix import LOG_DECAY, MatrixRecurrence
from mcgen.components.registry import (
    AGGREGATIONS,
    KINDS,
    RECURRENCES,
    SEGMENTATIONS,
    Kind,
    UnknownComponent,
    discover,
)
from mcgen.passes.pipeline import compile_spec
from mcgen.search.space import applies, spec_leaf_paths
from mcgen.segments import segment_ends
from mcgen.spec import SpecError, parse_spec


def segments_of(segmentation: SegmentationComponent) -> str:
    """A YAML segmentation of this kind, with the fields its component reads."""
    if SEGMENT_LENGTH in segmentation.fields:
        return f"{{kind: {segmentation.name}, length: 8}}"
    if SEGMENT_BOUNDARIES in segmentation.fields:
        return f"{{kind: {segmentation.name}, boundaries: [8, 24]}}"
    return f"{{kind: {segmentation.name}}}"


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(text, "s.yaml")
    return [str(p) for p in caught.value.problems]


@pytest.mark.parametrize("recurrence", RECURRENCES.names())
def test_every_recurrence_is_a_spec_that_compiles_with_a_cost(recurrence: str) -> None:
    spec = parse_spec(spec_text(recurrence=recurrence))
    component = RECURRENCES.get(recurrence)
    assert spec.layer.key_norm == component.default_key_norm
    compiled = compile_spec(spec, 64)
    scan = compiled.after.nodes["scan"]
    assert scan["op"].recurrence == recurrence
    assert scan["cost"]["flops_per_token"] > 0 and scan["cost"]["bytes"] > 0
    assert compiled.after.graph["cost"]["memory"] == component.memory
    plan = compiled.plan
    assert plan.recurrence_component is component
    # What the plan reads is what the component says its scan reads.
    assert set(plan.rate_inputs) == set(component.rate_inputs(scan["op"]))
    assert set(plan.rate_inputs) <= set(component.possible_inputs())


@pytest.mark.parametrize("aggregation", AGGREGATIONS.names())
def test_every_aggregation_is_a_spec_that_compiles(aggregation: str) -> None:
    component = AGGREGATIONS.get(aggregation)
    compiled = compile_spec(parse_spec(spec_text(aggregation=aggregation)), 64)
    before = compiled.before
    assert before.nodes["aggregate"]["op"].kind == aggregation
    assert ("gate" in before) == component.gated
    assert ("cache" in before) == component.reads_cache
    if component.gated:
        assert before.nodes["gate"]["op"].kind == component.gate
    # On a matrix memory the plan holds what the passes made of it.
    assert compiled.plan.aggregation == (component.matrix_equivalent or aggregation)


@pytest.mark.parametrize("segmentation", SEGMENTATIONS.names())
def test_every_segmentation_is_a_spec_that_compiles(segmentation: str) -> None:
    component = SEGMENTATIONS.get(segmentation)
    spec = parse_spec(spec_text(segments=segments_of(component), init="independent"))
    compiled = compile_spec(spec, 64)
    assert compiled.after.nodes["segments"]["op"].kind == segmentation
    seg = spec.cache.segments
    assert segment_ends(segmentation, seg.length, seg.boundaries, 64) == component.ends(
        seg.length, seg.boundaries, 64
    )
    assert bool(component.ends(seg.length, seg.boundaries, 64)) == component.has_boundaries


# How a spec chooses an unknown component of each kind.
UNKNOWN = {
    "recurrence": {"recurrence": "lstm"},
    "aggregation": {"aggregation": "lstm"},
    "segmentation": {"segments": "{kind: lstm}"},
}


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.what)
def test_the_schema_names_every_registered_component_and_only_those(kind: Kind) -> None:
    (found,) = problems(spec_text(name="s", **UNKNOWN[kind.what]))
    allowed = in_words([repr(name) for name in kind.names()], "or")
    assert found.endswith(f"Input should be {allowed}, got 'lstm'"), found
    with pytest.raises(UnknownComponent, match="one of"):
        kind.get("lstm")


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.what)
def test_every_declared_field_is_a_spec_field_a_search_drops_where_unread(kind: Kind) -> None:
    leaves = spec_leaf_paths()
    for path, (_, owners) in kind.fields().items():
        assert any(leaf == path or leaf.startswith(f"{path}.") for leaf in leaves), path
        for component in kind:
            mapping: dict = {}
            parent = mapping
            *sections, last = kind.selector.split(".")
            for section in sections:
                parent = parent.setdefault(section, {})
            parent[last] = component.name
            assert applies(mapping, path) == (component.name in owners), (path, component)


class Fake(MatrixRecurrence):
    """A decayed matrix memory that only this test knows."""

    name = "fake"
    inputs = (LOG_DECAY,)
    fields = (DECAY_NORMALIZER,)


class Loud(GatedAggregation):
    """A gated aggregation that only this test knows, costed twice grm's mixing."""

    name = "loud"

    def aggregate_flops(self, ctx: CostContext) -> float:
        return 2 * super().aggregate_flops(ctx)


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(RECURRENCES.by_name, "fake", Fake())
    monkeypatch.setitem(AGGREGATIONS.by_name, "loud", Loud())


def test_a_registered_recurrence_is_a_valid_spec_name(registered: None) -> None:
    spec = parse_spec(spec_text(recurrence="fake"))
    assert spec.layer.decay_normalizer == 16.0  # its declared field's default
    compiled = compile_spec(spec, 64)
    assert compiled.plan.recurrence == "fake" and compiled.plan.uses_g
    assert not compiled.plan.uses_beta
    assert "g" in compiled.after and compiled.after.nodes["scan"]["cost"]["flops"] > 0
    assert not has_triton(compiled.plan)  # it names no kernel template
    assert applies({"memory": {"recurrence": "fake"}}, "layer.decay_normalizer")
    # The rules name it among the recurrences the field applies to.
    text = spec_text(name="s").replace("{d_model: 16}", "{d_model: 16, decay_normalizer: 8}")
    (found,) = problems(text)
    assert "applies to decay, gated_delta, " in found and found.endswith(" and fake only"), found
    (found,) = problems(spec_text(name="s", recurrence="lstm"))
    assert "'titans' or 'fake', got 'lstm'" in found, found


def test_a_registered_aggregation_is_a_valid_spec_name(registered: None) -> None:
    loud = compile_spec(parse_spec(spec_text(aggregation="loud")), 64)
    grm = compile_spec(parse_spec(spec_text(aggregation="grm")), 64)
    assert loud.plan.aggregation == "loud" and loud.plan.gated and loud.plan.uses_u
    assert loud.after.nodes["gate"]["op"].kind == "softmax"
    flops = [c.after.nodes["aggregate"]["cost"]["flops"] for c in (loud, grm)]
    assert flops[0] == 2 * flops[1] > 0
    (found,) = problems(
        spec_text(name="s", aggregation="residual", aggregation_extra=", pool: sum")
    )
    assert "gated aggregations (grm, soup, ssc, loud)" in found, found


def test_the_registry_lists_each_name_once() -> None:
    twice = [SimpleNamespace(COMPONENT=Fake()), SimpleNamespace(COMPONENT=Fake())]
    with pytest.raises(ValueError, match="two recurrence components"):
        Kind("recurrence", "memory.recurrence", twice)


@pytest.mark.parametrize(
    "module", ["mcgen.components.registry", "mcgen.spec.schema", "mcgen.passes.validate"]
)
def test_each_layer_can_be_imported_first(module: str) -> None:
    # The schema asks the registry for names; components must not import the spec back.
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("kind", "shared"),
    [(RECURRENCES, {"matrix", "deep"}), (AGGREGATIONS, {"gated"}), (SEGMENTATIONS, {"by_length"})],
    ids=["recurrences", "aggregations", "segmentations"],
)
def test_the_registry_finds_every_component_module(kind, shared) -> None:
    """A new variant is a new module in its kind's folder: the registry finds it by its
    COMPONENT, and skips the modules that hold what several components share."""
    package = importlib.import_module(f"mcgen.components.{kind.what}s")
    modules = {info.name for info in pkgutil.iter_modules(package.__path__)}
    components = {m.__name__.rsplit(".", 1)[1] for m in discover(package)}
    assert components == modules - shared
    assert sorted(kind.names()) == sorted(kind.by_name)  # one component per name
    assert len(kind.names()) == len(components)
