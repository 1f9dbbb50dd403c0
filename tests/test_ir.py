"""Lowering (spec -> graph IR), rendering and the plan read off the IR."""

from __future__ import annotations

import itertools

import networkx as nx
import pytest
from spec_helpers import SEGMENTS, make_spec

from mcgen.ir.errors import IRError
from mcgen.ir.graph import lower
from mcgen.ir.plan import plan_from_ir
from mcgen.ir.render import dot_quote, to_dot, to_text
from mcgen.passes.validate import validate_ir
from mcgen.spec import Spec

# What these tests share; `ir_spec` names each spec after its aggregation (t_grm, t_ssc, ...).
IR_FIELDS = {"segments": SEGMENTS["constant"], "value_dim": 6, "chunk_size": 16, "d_model": 32}


def ir_spec(*, aggregation: str = "grm", **fields) -> Spec:
    return make_spec(name=f"t_{aggregation}", aggregation=aggregation, **(IR_FIELDS | fields))


BASE = {"q", "k", "v", "segments", "scan", "read_online", "aggregate", "out"}
CACHED = {"cache", "read_cached"}
GATED = {"u", "pool", "gate"}


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [
        ("none", BASE),
        ("residual", BASE | CACHED),
        ("grm", BASE | CACHED | GATED),
        ("soup", BASE | CACHED | GATED),
        ("ssc", BASE | CACHED | GATED),
    ],
)
def test_lowering_has_the_nodes_the_aggregation_needs(aggregation: str, expected: set) -> None:
    graph = lower(ir_spec(aggregation=aggregation))
    assert set(graph.nodes) == expected
    assert graph.nodes["aggregate"]["kind"] == aggregation  # faithful: soup stays soup
    assert graph.graph["notes"] == []
    assert graph.graph["memory"] == "matrix"
    assert graph.graph["spec"].aggregation.kind == aggregation


def test_grm_edges_are_the_data_flow() -> None:
    graph = lower(ir_spec(aggregation="grm"))
    edges = {(src, dst, data["arg"]) for src, dst, data in graph.edges(data=True)}
    assert edges == {
        ("k", "scan", "k"),
        ("v", "scan", "v"),
        ("segments", "scan", "segments"),
        ("scan", "read_online", "state"),
        ("q", "read_online", "q"),
        ("read_online", "aggregate", "online"),
        ("scan", "cache", "states"),
        ("segments", "cache", "segments"),
        ("cache", "read_cached", "cache"),
        ("q", "read_cached", "q"),
        ("read_cached", "aggregate", "cached"),
        ("k", "pool", "k"),
        ("segments", "pool", "segments"),
        ("pool", "gate", "descriptors"),
        ("u", "gate", "u"),
        ("gate", "aggregate", "weights"),
        ("aggregate", "out", "o"),
    }
    assert nx.is_directed_acyclic_graph(graph)


@pytest.mark.parametrize(
    ("recurrence", "extra"),
    [("linear", set()), ("decay", {"g"}), ("delta", {"beta"}), ("gated_delta", {"g", "beta"})],
)
def test_recurrence_inputs_feed_the_scan(recurrence: str, extra: set) -> None:
    graph = lower(ir_spec(recurrence=recurrence, aggregation="none"))
    assert set(graph.nodes) == BASE | extra
    scan_inputs = {data["arg"]: src for src, _, data in graph.in_edges("scan", data=True)}
    assert scan_inputs == {"k": "k", "v": "v", "segments": "segments"} | {a: a for a in extra}
    assert graph.nodes["scan"]["recurrence"] == recurrence
    if "g" in extra:
        assert graph.nodes["g"]["shape"] == "[B,T,H]"


def test_query_connector_has_no_u_and_the_gate_reads_q() -> None:
    graph = lower(ir_spec(aggregation="grm", aggregation_extra=", connector: query"))
    assert "u" not in graph
    assert graph.nodes["gate"]["connector"] == "query"
    assert graph.has_edge("q", "gate") and graph.edges["q", "gate"]["arg"] == "u"
    assert not plan_from_ir(graph).uses_u


def test_shapes_dims_and_gate_attributes() -> None:
    graph = lower(ir_spec(aggregation="ssc", key_dim=8, value_dim=6, heads=3))
    q, v, scan = graph.nodes["q"], graph.nodes["v"], graph.nodes["scan"]
    assert (q["op"], q["shape"], q["dims"]) == ("input", "[B,T,H,K]", {"H": 3, "K": 8})
    assert (v["shape"], v["dims"]) == ("[B,T,H,V]", {"H": 3, "V": 6})
    assert scan["state_shape"] == "[V,K]" and scan["state_dims"] == {"V": 6, "K": 8}
    assert scan["state_dtype"] == "fp32" and scan["chunk_size"] == 16
    gate = graph.nodes["gate"]
    assert gate["kind"] == "topk_softmax" and gate["top_k"] == 4  # the resolved default
    assert gate["gate_scale"] == pytest.approx(8**-0.5)
    assert graph.nodes["read_cached"]["form"] == "state"
    grm_gate = lower(ir_spec(aggregation="grm")).nodes["gate"]
    assert grm_gate["kind"] == "softmax" and grm_gate["top_k"] is None


def test_segmentation_attributes() -> None:
    seg = lower(ir_spec(segments=SEGMENTS["explicit"])).nodes["segments"]
    assert (seg["op"], seg["kind"], seg["boundaries"], seg["length"]) == (
        "segmentation",
        "explicit",
        (3, 7, 12),
        None,
    )
    assert lower(ir_spec(segments=SEGMENTS["logarithmic"])).nodes["segments"]["length"] == 2


@pytest.mark.parametrize(
    ("recurrence", "aggregation", "segments", "init"),
    list(
        itertools.product(
            ["linear", "decay", "delta", "gated_delta"],
            ["none", "residual", "grm", "soup", "ssc"],
            list(SEGMENTS),
            ["checkpoint", "independent"],
        )
    ),
)
def test_every_lowering_validates(recurrence: str, aggregation: str, segments: str, init: str):
    graph = lower(
        ir_spec(
            recurrence=recurrence, aggregation=aggregation, segments=SEGMENTS[segments], init=init
        )
    )
    validate_ir(graph)


def test_text_has_one_line_per_node_in_topological_order() -> None:
    graph = lower(ir_spec(aggregation="grm"))
    lines = to_text(graph).splitlines()
    ids = [line.split(":")[0].strip() for line in lines]
    assert sorted(ids) == sorted(graph.nodes)
    for src, dst in graph.edges:
        assert ids.index(src) < ids.index(dst)
    scan_line = lines[ids.index("scan")]
    assert "recurrence_scan" in scan_line and "recurrence=linear" in scan_line
    assert "<- " in scan_line and "k=k" in scan_line


def test_dot_is_deterministic_and_complete() -> None:
    spec = ir_spec(aggregation="ssc", recurrence="gated_delta")
    dot = to_dot(lower(spec))
    assert dot == to_dot(lower(spec))
    assert dot.startswith('digraph "t_ssc" {') and dot.rstrip().endswith("}")
    graph = lower(spec)
    for node in graph.nodes:
        assert f'\n  "{node}" [label=' in dot
    assert dot.count(" -> ") == graph.number_of_edges()
    assert dot.count("{") == dot.count("}")


def test_dot_quote_escapes() -> None:
    assert dot_quote('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    dot = to_dot(lower(ir_spec()), name='x"; evil')
    assert dot.startswith('digraph "x\\"; evil" {')


def test_plan_from_lowered_graph() -> None:
    spec = ir_spec(
        recurrence="gated_delta", aggregation="ssc", segments=SEGMENTS["explicit"], chunk_size=32
    )
    plan = plan_from_ir(lower(spec))
    assert (plan.recurrence, plan.aggregation, plan.segments) == ("gated_delta", "ssc", "explicit")
    assert plan.boundaries == (3, 7, 12) and plan.segment_length is None
    assert plan.uses_g and plan.uses_beta and plan.uses_u
    assert (plan.top_k, plan.pool, plan.connector, plan.chunk_size) == (4, "mean", "separate", 32)
    assert plan.caches

    plain = plan_from_ir(lower(ir_spec(aggregation="none", recurrence="decay")))
    assert plain.uses_g and not plain.uses_beta and not plain.uses_u
    assert plain.connector is None and plain.gate_scale is None and not plain.caches


def test_plan_refuses_soup() -> None:
    with pytest.raises(IRError, match="soup"):
        plan_from_ir(lower(ir_spec(aggregation="soup")))
