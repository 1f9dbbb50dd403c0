"""Each pass on its own, on hand-made specs; then the pipeline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial

import networkx as nx
import pytest
from spec_helpers import SEGMENTS, make_spec

from mcgen.ir.errors import IRError
from mcgen.ir.graph import inputs_of, lower
from mcgen.ir.ops import Input, Read, rewrite
from mcgen.ir.plan import plan_from_ir
from mcgen.ir.render import to_text
from mcgen.passes.cost import annotate_cost
from mcgen.passes.dead_cache import dead_cache
from mcgen.passes.linear_attention import linear_attention
from mcgen.passes.pipeline import PASSES, compile_spec, run_passes, trace_passes
from mcgen.passes.read_form import read_form
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


def deep_pass_spec(recurrence: str = "dla", deep: str | None = None, **fields) -> Spec:
    """A deep memory (value_dim == key_dim); `deep` is the memory.deep flow mapping."""
    return pass_spec(recurrence=recurrence, value_dim=8, deep=deep, **fields)


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
    assert after.nodes["aggregate"]["op"].kind == "grm"
    assert after.nodes["gate"]["op"].kind == "softmax"
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
    assert soup_to_grm(graph).nodes["aggregate"]["op"].kind == "soup"


@pytest.mark.parametrize("recurrence", ["dla", "titans"])
def test_soup_to_grm_passes_a_deep_soup_through_without_a_note(recurrence: str) -> None:
    before = lower(deep_pass_spec(recurrence, aggregation="soup"))
    after = soup_to_grm(before)
    assert after is not before and snapshot(after) == snapshot(before)
    assert after.nodes["aggregate"]["op"].kind == "soup" and after.graph["notes"] == []


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
    assert after.nodes["aggregate"]["op"].kind == "none"
    assert after.nodes["scan"]["op"].init == "checkpoint"
    assert after.nodes["segments"]["op"].kind == "none"
    assert (
        after.nodes["segments"]["op"].length is None
        and after.nodes["segments"]["op"].boundaries is None
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
        ("dla", "independent", "residual"),  # an MLP's segments do not add up to one MLP
        ("titans", "independent", "residual"),
    ],
)
def test_linear_attention_does_not_fire(recurrence: str, init: str, aggregation: str) -> None:
    value_dim = 8 if recurrence in ("dla", "titans") else 6
    before = lower(
        pass_spec(recurrence=recurrence, init=init, aggregation=aggregation, value_dim=value_dim)
    )
    assert snapshot(linear_attention(before)) == snapshot(before)


# --- dead_cache -------------------------------------------------------------------------


def test_dead_cache_none_checkpoint_drops_the_segmentation() -> None:
    after = dead_cache(lower(pass_spec(aggregation="none", init="checkpoint")))
    assert after.nodes["segments"]["op"].kind == "none"
    assert after.nodes["segments"]["op"].length is None
    (note,) = after.graph["notes"]
    assert note.startswith("dead_cache") and "segments constant -> none" in note
    validate_ir(after)


def test_dead_cache_none_independent_keeps_the_segmentation() -> None:
    before = lower(pass_spec(aggregation="none", init="independent"))
    after = dead_cache(before)
    assert after.nodes["segments"]["op"].kind == "constant"
    assert after.nodes["segments"]["op"].length == 4
    assert after.nodes["scan"]["op"].init == "independent"
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
    assert after.nodes["aggregate"]["op"].kind == "none"
    # One segment: independent and checkpoint are the same computation.
    assert after.nodes["scan"]["op"].init == "checkpoint"
    (note,) = after.graph["notes"]
    assert "no segment boundary" in note and "read_cached" in note
    validate_ir(after)


@pytest.mark.parametrize("aggregation", ["residual", "grm", "ssc", "soup"])
def test_dead_cache_removes_a_deep_cache_and_reads_online_at_q(aggregation: str) -> None:
    spec = deep_pass_spec("titans", aggregation=aggregation, segments=SEGMENTS["none"])
    after = dead_cache(lower(spec))
    assert set(after.nodes) == {
        "q",
        "k",
        "v",
        "weights",
        "beta",
        "eta",
        "g",
        "segments",
        "scan",
        "read_online",
        "aggregate",
        "out",
    }
    assert after.nodes["aggregate"]["op"].kind == "none"
    # soup handed the online weights to the aggregate; now the online read reads at q again.
    assert after.nodes["read_online"]["op"].form == "state"
    assert inputs_of(after, "read_online") == {"state": "scan", "q": "q"}
    assert inputs_of(after, "aggregate") == {"online": "read_online"}
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
    assert after.nodes["aggregate"]["op"].kind == "grm"
    assert after.nodes["gate"]["op"].kind == "softmax" and after.nodes["gate"]["op"].top_k is None
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


def test_ssc_to_grm_works_for_a_deep_memory() -> None:
    spec = deep_pass_spec(
        "dla", aggregation="ssc", segments=SEGMENTS["explicit"], aggregation_extra=", top_k: 3"
    )
    after = ssc_to_grm(lower(spec))
    assert after.nodes["aggregate"]["op"].kind == "grm" and after.graph["memory"] == "deep"
    assert after.nodes["read_cached"]["op"].form == "state"
    validate_ir(after)


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


def test_validate_catches_a_deep_scan_without_its_weights() -> None:
    graph = lower(deep_pass_spec("dla", aggregation="grm"))
    graph.remove_node("weights")
    with pytest.raises(IRError, match=r"'scan'.*dla.*lacks required input\(s\): weights"):
        validate_ir(graph)


def test_validate_catches_missing_or_extra_deep_rates() -> None:
    graph = lower(deep_pass_spec("titans", aggregation="none"))
    graph.remove_node("eta")
    with pytest.raises(IRError, match=r"titans.*lacks required input\(s\): eta"):
        validate_ir(graph)
    # A constant lr: a beta input is one the scan does not use.
    graph = lower(deep_pass_spec("titans", "{lr: 0.1}", aggregation="none"))
    graph.add_node("beta", op=Input(name="beta", shape="[B,T,H]", dims={"H": 2}, dtype="bf16"))
    graph.add_edge("beta", "scan", arg="beta")
    with pytest.raises(IRError, match="does not use: beta"):
        validate_ir(graph)


def test_validate_catches_inconsistent_deep_attributes() -> None:
    graph = lower(deep_pass_spec("dla"))
    rewrite(graph, "scan", params=100)
    with pytest.raises(IRError, match="has 256 weights per head, not params=100"):
        validate_ir(graph)

    graph = lower(deep_pass_spec("dla"))
    rewrite(graph, "weights", dims={"H": 2, "P": 64})
    with pytest.raises(IRError, match="'weights': P=64"):
        validate_ir(graph)

    graph = lower(deep_pass_spec("dla"))
    rewrite(graph, "scan", momentum=0.9)
    with pytest.raises(IRError, match="dla has no momentum"):
        validate_ir(graph)

    graph = lower(deep_pass_spec("titans"))
    rewrite(graph, "scan", decay=1.5)
    with pytest.raises(IRError, match=r"decay must be 'data' or a number in \[0, 1\)"):
        validate_ir(graph)

    graph = lower(deep_pass_spec("titans"))
    graph.graph["memory"] = "matrix"
    with pytest.raises(IRError, match="recurrence 'titans', whose memory is deep"):
        validate_ir(graph)


def test_validate_catches_soup_reads_of_the_wrong_form() -> None:
    # A matrix soup reads each memory at q; handing weights over needs a deep memory.
    graph = lower(pass_spec(aggregation="soup"))
    rewrite(graph, "read_online", form="weights")
    with pytest.raises(IRError, match="'read_online': form weights.*needs a deep memory"):
        validate_ir(graph)
    graph = lower(pass_spec(aggregation="soup"))
    rewrite(graph, "read_cached", form="weights")
    with pytest.raises(IRError, match="soup needs reads of form state.*'read_cached'"):
        validate_ir(graph)
    # A deep soup whose cached read still reads at q (and so returns outputs, not weights).
    graph = lower(deep_pass_spec("dla", aggregation="soup"))
    rewrite(graph, "read_cached", form="state")
    graph.add_edge("q", "read_cached", arg="q")
    with pytest.raises(IRError, match="needs reads of form weights.*'read_cached'"):
        validate_ir(graph)
    # ... and one without the query the mixture is read at.
    graph = lower(deep_pass_spec("dla", aggregation="soup"))
    graph.remove_edge("q", "aggregate")
    with pytest.raises(IRError, match=r"'aggregate'.*lacks required input\(s\): q"):
        validate_ir(graph)


def test_validate_catches_a_node_without_an_op_record() -> None:
    graph = lower(pass_spec())
    graph.add_node("stray", op="input", name="x")  # the untyped attributes of old
    with pytest.raises(IRError, match="'stray': its op must be an op record"):
        validate_ir(graph)


def test_validate_catches_a_cycle() -> None:
    graph = lower(pass_spec())
    graph.add_edge("out", "scan", arg="k")
    with pytest.raises(IRError, match="cycle"):
        validate_ir(graph)


def test_validate_catches_g_on_a_linear_scan() -> None:
    graph = lower(pass_spec(recurrence="linear"))
    graph.add_node("g", op=Input(name="g", shape="[B,T,H]", dims={"H": 2}, dtype="bf16"))
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
    rewrite(graph, "gate", top_k=2)
    with pytest.raises(IRError, match="top_k=2 given on a softmax gate"):
        validate_ir(graph)

    graph = lower(pass_spec(aggregation="ssc"))
    rewrite(graph, "gate", kind="softmax", top_k=None)
    with pytest.raises(IRError, match="ssc needs a topk_softmax gate"):
        validate_ir(graph)

    graph = lower(pass_spec())
    rewrite(graph, "q", dims={"H": 2, "K": 4})
    with pytest.raises(IRError, match="'q': K=4 does not match the state's K=8"):
        validate_ir(graph)

    graph = lower(pass_spec(aggregation="grm", aggregation_extra=", connector: query"))
    rewrite(graph, "gate", connector="separate")
    with pytest.raises(IRError, match="connector separate reads input 'u'"):
        validate_ir(graph)

    graph = lower(pass_spec())
    rewrite(graph, "segments", length=None)
    with pytest.raises(IRError, match="positive length"):
        validate_ir(graph)


# --- no pass mutates its input ----------------------------------------------------------

SPECS = [
    pass_spec(aggregation="soup"),
    pass_spec(aggregation="residual", init="independent"),
    pass_spec(aggregation="ssc", segments=SEGMENTS["explicit"], aggregation_extra=", top_k: 5"),
    pass_spec(aggregation="grm", segments=SEGMENTS["none"]),
    pass_spec(aggregation="none", recurrence="gated_delta"),
    deep_pass_spec("titans", aggregation="soup", segments=SEGMENTS["none"]),
    deep_pass_spec("dla", aggregation="residual", init="independent"),
]
PASS_FUNCTIONS: list[Callable[[nx.DiGraph], nx.DiGraph]] = [
    validate_ir,
    soup_to_grm,
    linear_attention,
    ssc_to_grm,
    dead_cache,
    lambda graph: read_form(graph, 64),
    lambda graph: annotate_cost(graph, 64),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.memory.recurrence}-{s.aggregation.kind}")
@pytest.mark.parametrize("fn", PASS_FUNCTIONS)
def test_passes_do_not_mutate_their_input(spec: Spec, fn: Callable) -> None:
    graph = lower(spec)
    before = snapshot(graph)
    records = dict(graph.nodes(data="op"))
    result = fn(graph)
    assert result is not graph
    assert snapshot(graph) == before
    # A rewrite replaces a record in the new graph; the input keeps its own records.
    assert all(graph.nodes[n]["op"] is op for n, op in records.items())
    # The copy owns its notes list: appending to it leaves the input alone.
    result.graph["notes"].append("x")
    assert graph.graph["notes"] == before[2]


# --- read_form: state or attention form for the cached reads --------------------------


def read_choice(**fields) -> Read:
    """The cached read after every pass, for a spec of `pass_spec` with `fields`."""
    return compile_spec(pass_spec(**fields), seq_len=256).after.nodes["read_cached"]["op"]


def test_read_form_prefers_the_state_form_for_long_segments() -> None:
    # K = V = 8: attention form costs about 4K per visible key, state form 2KV per state.
    node = read_choice(segments="{kind: constant, length: 32}", value_dim=8)
    assert node.form == "state"
    assert "state form" in node.form_reason and "cheaper" in node.form_reason


def test_read_form_prefers_the_attention_form_for_short_segments() -> None:
    node = read_choice(segments="{kind: constant, length: 2}", value_dim=8, key_dim=64)
    assert node.form == "attention"
    assert "shorter" in node.form_reason


@pytest.mark.parametrize("forced", ["state", "attention"])
def test_read_form_can_be_forced(forced: str) -> None:
    length = 2 if forced == "state" else 32  # what auto would not choose
    node = read_choice(segments=f"{{kind: constant, length: {length}}}", read_form=forced)
    assert node.form == forced and "forced by compute.read_form" in node.form_reason
    assert (
        compile_spec(
            pass_spec(segments=f"{{kind: constant, length: {length}}}", read_form=forced)
        ).plan.read_form
        == forced
    )


def test_read_form_is_state_for_delta_rules_and_absent_without_cache() -> None:
    assert read_choice(recurrence="delta", segments="{kind: constant, length: 2}").form == "state"
    assert compile_spec(pass_spec(aggregation="none")).plan.read_form is None
    assert compile_spec(deep_pass_spec("titans", aggregation="grm")).plan.read_form is None


def test_read_form_costs_the_chosen_algorithm() -> None:
    def read_flops(form: str) -> float:
        graph = compile_spec(pass_spec(read_form=form), seq_len=256).after
        return graph.nodes["read_cached"]["cost"]["flops_per_token"]

    state, attention = read_flops("state"), read_flops("attention")
    # Segments of 4 tokens, K = 8, V = 6: 2*K*V = 96 per state, (2K + 2V) * 4 = 112 per segment.
    assert state > 0 and attention > 0
    assert attention / state == pytest.approx(112 / 96, rel=0.05)


def test_read_form_is_a_choice_not_a_rewrite() -> None:
    assert compile_spec(pass_spec(read_form="attention")).notes == []


# --- the pipeline -----------------------------------------------------------------------


def test_pipeline_order() -> None:
    assert [p.name for p in PASSES] == [
        "validate",
        "soup_to_grm",
        "linear_attention",
        "ssc_to_grm",
        "dead_cache",
        "validate",
        "read_form",
        "annotate_cost",
    ]
    steps = trace_passes(lower(pass_spec(aggregation="soup")), seq_len=32)
    assert [name for name, _ in steps] == [p.name for p in PASSES]
    assert steps[1][1].nodes["aggregate"]["op"].kind == "grm"


def test_run_passes_returns_the_notes() -> None:
    graph, notes = run_passes(lower(pass_spec(aggregation="soup")), seq_len=64)
    assert graph.nodes["aggregate"]["op"].kind == "grm"
    assert len(notes) == 1 and notes[0].startswith("soup_to_grm")
    assert graph.graph["cost"]["seq_len"] == 64
    assert all("cost" in attrs for _, attrs in graph.nodes(data=True))


def test_canonical_spec_has_no_notes() -> None:
    _, notes = run_passes(lower(pass_spec(aggregation="grm")))
    assert notes == []


def test_compile_spec_plans() -> None:
    la = compile_spec(pass_spec(aggregation="residual", init="independent"), seq_len=64)
    assert la.before.nodes["aggregate"]["op"].kind == "residual"
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


@pytest.mark.parametrize("recurrence", ["dla", "titans"])
def test_compile_keeps_soup_for_a_deep_memory(recurrence: str) -> None:
    compiled = compile_spec(deep_pass_spec(recurrence, aggregation="soup"), seq_len=64)
    assert compiled.notes == []
    plan = compiled.plan
    assert (plan.recurrence, plan.aggregation, plan.uses_u) == (recurrence, "soup", True)
    assert plan.deep is not None and plan.deep.squared_loss == plan.deep.has_momentum == (
        recurrence == "titans"
    )
    assert plan.uses_eta == (recurrence == "titans")
    # The matrix soup next to it still becomes grm.
    assert compile_spec(pass_spec(aggregation="soup"), seq_len=64).plan.aggregation == "grm"


def test_plan_refuses_a_matrix_soup_but_not_a_deep_one() -> None:
    with pytest.raises(IRError, match="soup.*matrix memory"):
        plan_from_ir(lower(pass_spec(aggregation="soup")))
    assert plan_from_ir(lower(deep_pass_spec("titans", aggregation="soup"))).aggregation == "soup"


# --- the plan reads the IR alone ----------------------------------------------------------

PLAN_SPECS = [
    *SPECS,
    pass_spec(aggregation="ssc", read_form="attention", chunk_size=16),
    deep_pass_spec("titans", "{lr: 0.1, momentum: 0.9}", aggregation="grm", init="independent"),
]
# Unlike every spec above in each field the plan has.
OTHER_SPEC = make_spec(
    name="other",
    recurrence="decay",
    segments=SEGMENTS["logarithmic"],
    aggregation="ssc",
    aggregation_extra=", top_k: 2, connector: query",
    chunk_size=8,
    read_form="state",
)


@pytest.mark.parametrize(
    "spec", PLAN_SPECS, ids=lambda s: f"{s.memory.recurrence}-{s.aggregation.kind}"
)
def test_the_plan_reads_the_ir_not_the_spec_behind_it(spec: Spec) -> None:
    graph, _ = run_passes(lower(spec), 64)
    plan = plan_from_ir(graph)
    graph.graph["spec"] = OTHER_SPEC
    assert plan_from_ir(graph) == plan
    del graph.graph["spec"]
    assert plan_from_ir(graph) == plan


def test_a_lowered_spec_and_its_ir_say_the_same_chunk_and_read_form() -> None:
    # What the plan needs from compute lives in the records.
    graph = lower(pass_spec(aggregation="ssc", read_form="attention", chunk_size=16))
    assert graph.nodes["scan"]["op"].chunk_size == 16
    assert graph.nodes["read_cached"]["op"].requested_form == "attention"


@pytest.mark.parametrize(
    "spec", PLAN_SPECS, ids=lambda s: f"{s.memory.recurrence}-{s.aggregation.kind}"
)
def test_passes_find_nodes_by_their_op_not_their_id(spec: Spec) -> None:
    graph = lower(spec)
    renamed = nx.relabel_nodes(graph, {n: f"n{i}" for i, n in enumerate(graph.nodes)})
    plan = compile_spec(spec, 64).plan
    # The notes name the nodes a pass removed, so they differ by the new ids only.
    moved = plan_from_ir(run_passes(renamed, 64)[0])
    assert replace(moved, notes=()) == replace(plan, notes=())
    assert len(moved.notes) == len(plan.notes)
