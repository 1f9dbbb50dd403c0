"""Templates ask the plan and the components for facts, never which component they render.

A new component then gets the right code by declaring its facts, with no template edit
naming it (issue 14 item 3).
"""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
import pytest
from jinja2 import nodes
from spec_helpers import spec_text

from mcgen.codegen.package import render_package
from mcgen.codegen.templates import environment, template_root
from mcgen.components.aggregations.gated import GatedAggregation
from mcgen.components.registry import AGGREGATIONS, KINDS, RECURRENCES, SEGMENTATIONS
from mcgen.passes.pipeline import compile_spec
from mcgen.spec import parse_spec

COMPONENT_NAMES = frozenset(name for kind in KINDS for name in kind.names())


def quoted_component_names(source: str) -> list[str]:
    """The component names written as string literals inside the template's Jinja
    expressions (the text it writes out is not an expression, so may name them)."""
    tree = environment().parse(source)
    return [
        const.value
        for const in tree.find_all(nodes.Const)
        if isinstance(const.value, str) and const.value in COMPONENT_NAMES
    ]


def test_the_name_check_reads_expressions_not_the_text_they_write() -> None:
    source = (
        '{% if plan.aggregation == "ssc" %}grm and "titans"{% endif %}'
        '{{ "x" if plan.recurrence in ("decay", "dla") }}'
    )
    assert quoted_component_names(source) == ["ssc", "decay", "dla"]
    assert quoted_component_names('{% if plan.selects_top_k %}"ssc"{% endif %}') == []


def test_no_template_tests_which_component_it_renders() -> None:
    root = template_root()
    found = {
        path.relative_to(root).as_posix(): names
        for path in sorted(root.rglob("*.jinja"))
        if (names := quoted_component_names(path.read_text()))
    }
    assert found == {}, f"ask the plan or a component for the fact instead: {found}"


def test_no_components_own_code_tests_which_component_it_renders() -> None:
    """A recurrence's own code pieces (its module's `code`, swla's) ask facts too."""
    own = {c.name: c.code for c in RECURRENCES if getattr(c, "code", None)}
    assert own, "no recurrence holds its own code: this test checks nothing"
    found = {name: names for name, code in own.items() if (names := quoted_component_names(code))}
    assert found == {}, f"ask the plan or a component for the fact instead: {found}"


class Twin(GatedAggregation):
    """A gated aggregation only this test knows: it declares grm's facts and nothing else."""

    name = "grm_twin"


def test_a_new_aggregation_gets_the_code_of_the_facts_it_declares(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(AGGREGATIONS.by_name, "grm_twin", Twin())
    rendered = {}
    for aggregation in ("grm_twin", "grm"):
        spec = parse_spec(spec_text(name="same", aggregation=aggregation))
        package = render_package(spec, compile_spec(spec, 64).plan, command="mcgen build")
        rendered[aggregation] = package.files
    # The same text but for the name itself and the hashes of the spec and of the files.
    assert same_but_hashes(rendered["grm_twin"], "grm_twin", "grm") == same_but_hashes(
        rendered["grm"]
    )


def same_but_hashes(files: dict[str, str], name: str = "", as_name: str = "") -> dict[str, str]:
    """The files with `name` written as `as_name` and every hex digest as `H`."""
    return {
        file_name: re.sub(r"[0-9a-f]{12,}", "H", text.replace(name, as_name) if name else text)
        for file_name, text in files.items()
    }


def _segments_of(name: str) -> str:
    component = SEGMENTATIONS.get(name)
    if component.reads_length:
        return f"{{kind: {name}, length: 8}}"
    if component.reads_boundaries:
        return f"{{kind: {name}, boundaries: [8, 24]}}"
    return f"{{kind: {name}}}"


@pytest.mark.parametrize("segmentation", SEGMENTATIONS.names())
def test_each_segmentations_rule_template_writes_its_segment_ends(segmentation: str) -> None:
    component = SEGMENTATIONS.get(segmentation)
    assert Path(template_root(), component.rule_template).is_file()
    spec = parse_spec(spec_text(segments=_segments_of(segmentation)))
    files = render_package(spec, compile_spec(spec, 64).plan, command="mcgen build").files
    module: dict[str, object] = {}
    exec(compile(files["spec.py"], "spec.py", "exec"), module)
    seg = spec.cache.segments
    ends = component.ends(seg.length, seg.boundaries, 100)
    assert [t + 1 for t in range(100) if module["segment_end"](t) == t + 1] == ends
    # Each segment starts where the one before it ended.
    starts = [module["segment_start"](t) for t in range(100)]
    assert sorted(set(starts)) == [0, *ends[: len(set(starts)) - 1]]


def test_the_name_check_refuses_a_template_it_cannot_parse() -> None:
    # The check parses templates as the environment does: a syntax error is not a pass.
    with pytest.raises(jinja2.TemplateSyntaxError):
        quoted_component_names("{% if %}")
