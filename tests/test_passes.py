"""Each pass on its own, on hand-made specs; then the pipeline."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import networkx as nx
import pytest
from spec_helpers import SEGMENTS, make_spec

from mcgen.ir.errors import IRError
from mcgen.ir.graph import lower
from mcgen.ir.render import to_text
from mcgen.passes.cost import annotate_cost
from mcgen.passes.dead_cache import dead_cache
from mcgen.passes.linear_attention import linear_attention
from mcgen.passes.pipeline import PASSES, compile_spec, run_passes, trace_passes
from mcgen.passes.soup_to_grm import soup_to_grm
from mcgen.passes.ssc_to_grm import ssc_to_grm
from mcgen.passes.validate import validate_ir
from mcgen.spec import Spec

# No `compute` section: the schema's chunk size.
pass_spec = partial(
    make_spec,
    name="t",
    segments=SEGMENTS["constant"],
    value_dim=6,
    chunk_size=None,
    d_model=32,
)


def snapshot(graph: nx.DiGraph) -> tuple:
    return (
        to_text(graph),
        sorted((s, d, data["arg"]) for s, d, data in graph.edges(data=True)),
        list(graph.graph["notes"]),
        {n: dict(a) for n, a in graph.nodes(data=True)},
    )


# --- soup_to_grm ------------------------------------------------------------------------


def test_soup_becomes_grm_with_a_note() -> None:
    before = lower(pass_spec(aggregation="soup"))
    after = soup_to_grm(before)
    assert after.nodes["aggregate"]["kind"] == "grm"
    assert after.nodes["gate"]["kind"] == "softmax"
    assert set(after.nodes) == set(before.nodes)
    (note,) = after.graph["notes"]
    assert note.startswith("soup_to_grm") and "linear" in note
    validate_ir(after)


@pytest.mark.parametrize("aggregation", ["none", "residual", "grm", "ssc"])
def test_soup_to_grm_leaves_other_aggregations(aggregation: str) -> None:
    before = lower(pass_spec(aggregation=aggregation))
    after = soup_to_grm(before)
    assert snapshot(after) == snapshot(before)


def test_soup_stays_for_a_deep_memory() -> None:
    graph = lower(pass_spec(aggregation="soup"))
    graph.graph["memory"] = "deep"
    assert soup_to_grm(graph).nodes["aggregate"]["kind"] == "soup"


# --- linear_attention -------------------------------------------------------------------


@pytest.mark.parametrize("segments", ["constant", "logarithmic", "explicit"])
def test_residual_independent_linear_is_linear_attention(segments: str) -> None:
    spec = pass_spec(aggregation="residual", init="independent", segments=SEGMENTS[segments])
    after = linear_attention(lower(spec))
    assert set(after.nodes) == {
        "q",
        "k",
        "v",
        "segments",
        "scan",
        "read_online",
        "aggregate",
        "out",
    }
    assert after.nodes["aggregate"]["kind"] == "none"
    assert after.nodes["scan"]["init"] == "checkpoint"
    assert after.nodes["segments"]["kind"] == "none"
    assert (
        after.nodes["segments"]["length"] is None and after.nodes["segments"]["boundaries"] is None
    )
    (note,) = after.graph["notes"]
    assert note.startswith("linear_attention") and "running state" in note
    validate_ir(after)


@pytest.mark.parametrize(
    ("recurrence", "init", "aggregation"),
    [
        ("linear", "checkpoint", "residual"),  # caches overlap: not a sum of disjoint parts
        ("decay", "independent", "residual"),
        ("delta", "independent", "residual"),
        ("gated_delta", "independent", "residual"),
        ("linear", "independent", "grm"),  # gated: the weights differ per segment
        ("linear", "independent", "none"),
    ],
)
def test_linear_attention_does_not_fire(recurrence: str, init: str, aggregation: str) -> None:
    before = lower(pass_spec(recurrence=recurrence, init=init, aggregation=aggregation))
    assert snapshot(linear_attention(before)) == snapshot(before)


# --- dead_cache -------------------------------------------------------------------------


def test_dead_cache_none_checkpoint_drops_the_segmentation() -> None:
    after = dead_cache(lower(pass_spec(aggregation="none", init="checkpoint")))
    assert after.nodes["segments"]["kind"] == "none"
    assert after.nodes["segments"]["length"] is None
    (note,) = after.graph["notes"]
    assert note.startswith("dead_cache") and "segments constant -> none" in note
    validate_ir(after)


def test_dead_cache_none_independent_keeps_the_segmentation() -> None:
    before = lower(pass_spec(aggregation="none", init="independent"))
    after = dead_cache(before)
    assert after.nodes["segments"]["kind"] == "constant"
    assert after.nodes["segments"]["length"] == 4
    assert after.nodes["scan"]["init"] == "independent"
    assert set(after.nodes) == set(before.nodes)
    (note,) = after.graph["notes"]
    assert "kept" in note and "independent" in note


@pytest.mark.parametrize("aggregation", ["residual", "grm", "ssc", "soup"])
@pytest.mark.parametrize("init", ["checkpoint", "independent"])
def test_dead_cache_without_segments_removes_the_cache(aggregation: str, init: str) -> None:
    after = dead_cache(
        lower(pass_spec(aggregation=aggregation, segments=SEGMENTS["none"], init=init))
    )
    assert set(after.nodes) == {
        "q",
        "k",
        "v",
        "segments",
        "scan",
        "read_online",
        "aggregate",
        "out",
    }
    assert after.nodes["aggregate"]["kind"] == "none"
    # One segment: independent and checkpoint are the same computation.
    assert after.nodes["scan"]["init"] == "checkpoint"
    (note,) = after.graph["notes"]
    assert "no segment boundary" in note and "read_cached" in note
    validate_ir(after)


@pytest.mark.parametrize("aggregation", ["residual", "grm", "ssc"])
def test_dead_cache_leaves_a_live_cache(aggregation: str) -> None:
    before = lower(pass_spec(aggregation=aggregation))
    assert snapshot(dead_cache(before)) == snapshot(before)


# --- ssc_to_grm -------------------------------------------------------------------------


def test_ssc_with_top_k_covering_explicit_boundaries_is_grm() -> None:
    spec = pass_spec(
        aggregation="ssc", segments=SEGMENTS["explicit"], aggregation_extra=", top_k: 3"
    )
    after = ssc_to_grm(lower(spec))
    assert after.nodes["aggregate"]["kind"] == "grm"
    assert after.nodes["gate"]["kind"] == "softmax" and after.nodes["gate"]["top_k"] is None
    (note,) = after.graph["notes"]
    assert note.startswith("ssc_to_grm") and "top_k=3 >= 3" in note
    validate_ir(after)


@pytest.mark.parametrize(
    ("segments", "top_k"),
    [("explicit", 2), ("constant", 1000), ("logarithmic", 1000)],
)
def test_ssc_stays_when_top_k_can_drop_a_segment(segments: str, top_k: int) -> None:
    spec = pass_spec(
        aggregation="ssc", segments=SEGMENTS[segments], aggregation_extra=f", top_k: {top_k}"
    )
    before = lower(spec)
    assert snapshot(ssc_to_grm(before)) == snapshot(before)


# --- validate_ir ------------------------------------------------------------------------


def test_validate_accepts_a_lowered_graph_and_returns_a_copy() -> None:
    graph = lower(pass_spec(recurrence="gated_delta", aggregation="ssc"))
    checked = validate_ir(graph)
    assert checked is not graph and snapshot(checked) == snapshot(graph)


def test_validate_catches_a_missing_g() -> None:
    graph = lower(pass_spec(recurrence="decay", aggregation="grm"))
    graph.remove_edge("g", "scan")
    with pytest.raises(IRError, match=r"'scan'.*decay.*lacks required input\(s\): g"):
        validate_ir(graph)


def test_validate_catches_a_missing_beta() -> None:
    graph = lower(pass_spec(recurrence="delta", aggregation="none"))
    graph.remove_node("beta")
    with pytest.raises(IRError, match="beta"):
        validate_ir(graph)


def test_validate_catches_a_cycle() -> None:
    graph = lower(pass_spec())
    graph.add_edge("out", "scan", arg="k")
    with pytest.raises(IRError, match="cycle"):
        validate_ir(graph)


def test_validate_catches_g_on_a_linear_scan() -> None:
    graph = lower(pass_spec(recurrence="linear"))
    graph.add_node("g", op="input", name="g", shape="[B,T,H]", dims={"H": 2}, dtype="bf16")
    graph.add_edge("g", "scan", arg="g")
    with pytest.raises(IRError, match="does not use: g"):
        validate_ir(graph)


def test_validate_catches_read_cached_without_cache() -> None:
    graph = lower(pass_spec(aggregation="residual"))
    graph.remove_node("cache")
    with pytest.raises(IRError, match="'read_cached'.*lacks.*cache"):
        validate_ir(graph)


def test_validate_catches_a_gate_without_pool_or_u() -> None:
    graph = lower(pass_spec(aggregation="grm"))
    graph.remove_node("pool")
    with pytest.raises(IRError, match="'gate'.*descriptors"):
        validate_ir(graph)
    graph = lower(pass_spec(aggregation="grm"))
    graph.remove_node("u")
    with pytest.raises(IRError, match="'gate'.*lacks.*u"):
        validate_ir(graph)


def test_validate_catches_inconsistent_attributes() -> None:
    graph = lower(pass_spec(aggregation="grm"))
    graph.nodes["gate"]["top_k"] = 2
    with pytest.raises(IRError, match="top_k=2 given on a softmax gate"):
        validate_ir(graph)

    graph = lower(pass_spec(aggregation="ssc"))
    graph.nodes["gate"].update(kind="softmax", top_k=None)
    with pytest.raises(IRError, match="ssc needs a topk_softmax gate"):
        validate_ir(graph)

    graph = lower(pass_spec())
    graph.nodes["q"]["dims"] = {"H": 2, "K": 4}
    with pytest.raises(IRError, match="'q': K=4 does not match the state's K=8"):
        validate_ir(graph)

    graph = lower(pass_spec(aggregation="grm", aggregation_extra=", connector: query"))
    graph.nodes["gate"]["connector"] = "separate"
    with pytest.raises(IRError, match="connector separate reads input 'u'"):
        validate_ir(graph)

    graph = lower(pass_spec())
    graph.nodes["segments"]["length"] = None
    with pytest.raises(IRError, match="positive length"):
        validate_ir(graph)


# --- no pass mutates its input ----------------------------------------------------------

SPECS = [
    pass_spec(aggregation="soup"),
    pass_spec(aggregation="residual", init="independent"),
    pass_spec(aggregation="ssc", segments=SEGMENTS["explicit"], aggregation_extra=", top_k: 5"),
    pass_spec(aggregation="grm", segments=SEGMENTS["none"]),
    pass_spec(aggregation="none", recurrence="gated_delta"),
]
PASS_FUNCTIONS: list[Callable[[nx.DiGraph], nx.DiGraph]] = [
    validate_ir,
    soup_to_grm,
    linear_attention,
    ssc_to_grm,
    dead_cache,
    lambda graph: annotate_cost(graph, 64),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.aggregation.kind)
@pytest.mark.parametrize("fn", PASS_FUNCTIONS)
def test_passes_do_not_mutate_their_input(spec: Spec, fn: Callable) -> None:
    graph = lower(spec)
    before = snapshot(graph)
    result = fn(graph)
    assert result is not graph
    assert snapshot(graph) == before
    # The copy owns its notes list: appending to it leaves the input alone.
    result.graph["notes"].append("x")
    assert graph.graph["notes"] == before[2]


# --- the pipeline -----------------------------------------------------------------------


def test_pipeline_order() -> None:
    assert [p.name for p in PASSES] == [
        "validate",
        "soup_to_grm",
        "linear_attention",
        "ssc_to_grm",
        "dead_cache",
        "validate",
        "annotate_cost",
    ]
    steps = trace_passes(lower(pass_spec(aggregation="soup")), seq_len=32)
    assert [name for name, _ in steps] == [p.name for p in PASSES]
    assert steps[1][1].nodes["aggregate"]["kind"] == "grm"


def test_run_passes_returns_the_notes() -> None:
    graph, notes = run_passes(lower(pass_spec(aggregation="soup")), seq_len=64)
    assert graph.nodes["aggregate"]["kind"] == "grm"
    assert len(notes) == 1 and notes[0].startswith("soup_to_grm")
    assert graph.graph["cost"]["seq_len"] == 64
    assert all("cost" in attrs for _, attrs in graph.nodes(data=True))


def test_canonical_spec_has_no_notes() -> None:
    _, notes = run_passes(lower(pass_spec(aggregation="grm")))
    assert notes == []


def test_compile_spec_plans() -> None:
    la = compile_spec(pass_spec(aggregation="residual", init="independent"), seq_len=64)
    assert la.before.nodes["aggregate"]["kind"] == "residual"
    p = la.plan
    assert (p.aggregation, p.segments, p.init, p.caches) == ("none", "none", "checkpoint", False)
    assert p.notes and p.notes[0].startswith("linear_attention")

    soup = compile_spec(pass_spec(aggregation="soup"), seq_len=64).plan
    assert soup.aggregation == "grm" and soup.uses_u

    ssc = compile_spec(
        pass_spec(aggregation="ssc", segments=SEGMENTS["explicit"], aggregation_extra=", top_k: 3")
    ).plan
    assert ssc.aggregation == "grm" and ssc.top_k is None

    dead = compile_spec(
        pass_spec(aggregation="grm", segments=SEGMENTS["none"], init="independent")
    ).plan
    assert (dead.aggregation, dead.uses_u, dead.connector, dead.init) == (
        "none",
        False,
        None,
        "checkpoint",
    )

    kept = compile_spec(pass_spec(aggregation="none", init="independent")).plan
    assert (kept.segments, kept.segment_length, kept.init) == ("constant", 4, "independent")
