"""Lowering (spec -> graph IR), rendering and the plan read off the IR."""

from __future__ import annotations

import itertools

import networkx as nx
import pytest
from spec_helpers import SEGMENTS, make_spec

from mcgen.components.recurrences.deep import deep_params, deep_state_shape
from mcgen.ir.errors import IRError
from mcgen.ir.graph import inputs_of, lower
from mcgen.ir.ops import Input, Scan, Segmentation
from mcgen.ir.plan import DeepPlan, plan_from_ir
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
    assert graph.nodes["aggregate"]["op"].kind == aggregation  # faithful: soup stays soup
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
    assert graph.nodes["scan"]["op"].recurrence == recurrence
    if "g" in extra:
        assert graph.nodes["g"]["op"].shape == "[B,T,H]"


def test_query_connector_has_no_u_and_the_gate_reads_q() -> None:
    graph = lower(ir_spec(aggregation="grm", aggregation_extra=", connector: query"))
    assert "u" not in graph
    assert graph.nodes["gate"]["op"].connector == "query"
    assert graph.has_edge("q", "gate") and graph.edges["q", "gate"]["arg"] == "u"
    assert not plan_from_ir(graph).uses_u


def test_shapes_dims_and_gate_attributes() -> None:
    graph = lower(ir_spec(aggregation="ssc", key_dim=8, value_dim=6, heads=3))
    q, v, scan = (graph.nodes[n]["op"] for n in ("q", "v", "scan"))
    assert q == Input(name="q", shape="[B,T,H,K]", dims={"H": 3, "K": 8}, dtype="bf16")
    assert (v.shape, v.dims) == ("[B,T,H,V]", {"H": 3, "V": 6})
    assert isinstance(scan, Scan)
    assert scan.state_shape == "[V,K]" and scan.state_dims == {"V": 6, "K": 8}
    assert scan.state_dtype == "fp32" and scan.chunk_size == 16
    gate = graph.nodes["gate"]["op"]
    assert gate.kind == "topk_softmax" and gate.top_k == 4  # the resolved default
    assert gate.gate_scale == pytest.approx(8**-0.5)
    assert graph.nodes["read_cached"]["op"].form == "state"
    grm_gate = lower(ir_spec(aggregation="grm")).nodes["gate"]["op"]
    assert grm_gate.kind == "softmax" and grm_gate.top_k is None


def test_segmentation_attributes() -> None:
    seg = lower(ir_spec(segments=SEGMENTS["explicit"])).nodes["segments"]["op"]
    assert seg == Segmentation(kind="explicit", boundaries=(3, 7, 12), length=None)
    assert lower(ir_spec(segments=SEGMENTS["logarithmic"])).nodes["segments"]["op"].length == 2


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


# --- deep memories (dla, titans) ---------------------------------------------------------


def deep_spec(recurrence: str = "dla", deep: str | None = None, **fields) -> Spec:
    """A deep memory needs value_dim == key_dim; `deep` is the memory.deep flow mapping."""
    return ir_spec(recurrence=recurrence, value_dim=8, deep=deep, **fields)


@pytest.mark.parametrize(
    ("recurrence", "deep", "rates"),
    [
        ("dla", None, {"beta"}),  # lr defaults to data
        ("dla", "{lr: 0.1}", set()),
        ("titans", None, {"beta", "eta", "g"}),  # momentum and decay default to data too
        ("titans", "{lr: 0.1}", {"eta", "g"}),
        ("titans", "{momentum: 0.9}", {"beta", "g"}),
        ("titans", "{decay: 0.01}", {"beta", "eta"}),
        ("titans", "{lr: 0.1, momentum: 0.9, decay: 0.0}", set()),
    ],
)
def test_deep_lowering_reads_a_rate_input_for_each_data_rate(
    recurrence: str, deep: str | None, rates: set
) -> None:
    graph = lower(deep_spec(recurrence, deep, aggregation="none"))
    assert graph.graph["memory"] == "deep"
    assert set(graph.nodes) == BASE | {"weights"} | rates
    scan_inputs = {data["arg"]: src for src, _, data in graph.in_edges("scan", data=True)}
    assert scan_inputs == {"k": "k", "v": "v", "weights": "weights", "segments": "segments"} | {
        r: r for r in rates
    }
    for rate in rates:
        op = graph.nodes[rate]["op"]
        assert op.shape == "[B,T,H]" and op.dims == {"H": 2}
    weights = graph.nodes["weights"]["op"]
    assert (type(weights), weights.shape, weights.dtype) == (Input, "[H,P]", "fp32")
    # Default MLP: depth 2, expansion 2: K*Dh + Dh*V = 8*16 + 16*8.
    assert weights.dims == {"H": 2, "P": 256}
    validate_ir(graph)


def test_deep_scan_attributes() -> None:
    spec = deep_spec(
        "titans",
        "{depth: 3, expansion: 3, activation: silu, minibatch: 2, lr: 0.5, momentum: 0.9}",
        aggregation="grm",
    )
    graph = lower(spec)
    scan = graph.nodes["scan"]["op"]
    # K = V = 8, Dh = 24: 8*24 + 24*24 + 24*8.
    assert scan.params == 8 * 24 + 24 * 24 + 24 * 8 == 960
    assert scan.state_shape == "MLP K->Dh->Dh->V (depth 3)"
    assert scan.state_dims == {"V": 8, "K": 8} and scan.state_dtype == "fp32"
    assert (scan.depth, scan.hidden, scan.activation, scan.minibatch) == (3, 24, "silu", 2)
    assert (scan.lr, scan.momentum, scan.decay) == (0.5, 0.9, "data")
    cache = graph.nodes["cache"]["op"]
    assert (cache.state_shape, cache.params) == (scan.state_shape, 960)
    # dla has no momentum or decay: they stay None and are left out of the rendering.
    dla = lower(deep_spec("dla", "{depth: 1}")).nodes["scan"]["op"]
    assert dla.params == 8 * 8 and dla.state_shape == "MLP K->V (depth 1)"
    assert dla.momentum is None and dla.decay is None
    assert dla.hidden == 16  # the default expansion; unused at depth 1


@pytest.mark.parametrize(
    ("depth", "params"),
    [(1, 4 * 4), (2, 4 * 8 + 8 * 4), (3, 4 * 8 + 8 * 8 + 8 * 4), (4, 4 * 8 + 2 * 8 * 8 + 8 * 4)],
)
def test_deep_params_per_depth(depth: int, params: int) -> None:
    assert deep_params(depth, 4, 8, 4) == params
    assert deep_state_shape(depth).count("Dh") == depth - 1


def test_deep_soup_reads_the_mixed_weights_once() -> None:
    graph = lower(deep_spec("dla", aggregation="soup"))
    assert graph.nodes["aggregate"]["op"].kind == "soup"
    assert (
        graph.nodes["read_online"]["op"].form == graph.nodes["read_cached"]["op"].form == "weights"
    )
    # The reads hand their weights over; the aggregate reads the mixture at q.
    assert inputs_of(graph, "read_online") == {"state": "scan"}
    assert inputs_of(graph, "read_cached") == {"cache": "cache"}
    assert inputs_of(graph, "aggregate") == {
        "online": "read_online",
        "cached": "read_cached",
        "weights": "gate",
        "q": "q",
    }
    validate_ir(graph)
    # grm on a deep memory reads every memory at q, as for a matrix memory.
    grm = lower(deep_spec("dla", aggregation="grm"))
    assert grm.nodes["read_cached"]["op"].form == "state"
    assert inputs_of(grm, "read_cached") == {"cache": "cache", "q": "q"}
    assert "q" not in inputs_of(grm, "aggregate")


@pytest.mark.parametrize(
    ("recurrence", "aggregation", "segments", "init"),
    list(
        itertools.product(
            ["dla", "titans"],
            ["none", "residual", "grm", "soup", "ssc"],
            list(SEGMENTS),
            ["checkpoint", "independent"],
        )
    ),
)
def test_every_deep_lowering_validates(recurrence: str, aggregation: str, segments: str, init: str):
    spec = deep_spec(recurrence, aggregation=aggregation, segments=SEGMENTS[segments], init=init)
    validate_ir(lower(spec))


def test_deep_text_and_dot() -> None:
    spec = deep_spec("titans", "{lr: 0.1}", aggregation="soup")
    graph = lower(spec)
    lines = {line.split(":")[0].strip(): line for line in to_text(graph).splitlines()}
    assert set(lines) == set(graph.nodes)
    scan = lines["scan"]
    assert "state_shape=MLP K->Dh->V (depth 2)" in scan and "params=256" in scan
    assert "lr=0.1" in scan and "momentum=data" in scan and "decay=data" in scan
    assert "weights=weights" in scan and "eta=eta" in scan
    assert "form=weights" in lines["read_cached"] and "q=q" in lines["aggregate"]
    assert "momentum" not in to_text(lower(deep_spec("dla")))  # dla has none
    dot = to_dot(graph)
    assert dot == to_dot(lower(spec))
    assert dot.count(" -> ") == graph.number_of_edges()
    assert '"weights" -> "scan" [label="weights"];' in dot
    assert '"q" -> "aggregate" [label="q"];' in dot


def test_plan_for_deep_memories() -> None:
    dla = plan_from_ir(lower(deep_spec("dla", aggregation="soup")))
    assert (dla.recurrence, dla.aggregation) == ("dla", "soup")  # soup has a plan here
    assert dla.deep == DeepPlan(
        depth=2,
        hidden=16,
        activation="gelu",
        minibatch=1,
        squared_loss=False,
        has_momentum=False,
        lr=None,
        momentum=0.0,
        decay=0.0,
    )
    assert dla.uses_beta and not dla.uses_g and not dla.uses_eta and dla.uses_u

    titans = plan_from_ir(lower(deep_spec("titans", "{minibatch: 4}", aggregation="grm")))
    assert titans.deep is not None and titans.deep.squared_loss and titans.deep.minibatch == 4
    assert titans.deep.has_momentum
    assert (titans.deep.lr, titans.deep.momentum, titans.deep.decay) == (None, None, None)
    assert titans.uses_beta and titans.uses_eta and titans.uses_g

    fixed = plan_from_ir(
        lower(deep_spec("titans", "{lr: 0.1, momentum: 0.9, decay: 0.01}", aggregation="none"))
    )
    assert fixed.deep is not None
    assert (fixed.deep.lr, fixed.deep.momentum, fixed.deep.decay) == (0.1, 0.9, 0.01)
    assert not (fixed.uses_beta or fixed.uses_eta or fixed.uses_g or fixed.uses_u)

    # Matrix memories have no deep plan and no eta.
    matrix = plan_from_ir(lower(ir_spec(recurrence="gated_delta")))
    assert matrix.deep is None and not matrix.uses_eta


def test_plan_refuses_a_memory_that_does_not_match_the_recurrence() -> None:
    graph = lower(deep_spec("dla", aggregation="grm"))
    graph.graph["memory"] = "matrix"
    with pytest.raises(IRError, match="does not match recurrence 'dla'"):
        plan_from_ir(graph)
