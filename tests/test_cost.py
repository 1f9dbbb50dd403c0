"""The cost model against numbers worked out by hand (docs/method.md section 7)."""

from __future__ import annotations

import json
from functools import partial

import pytest
from rich.console import Console
from spec_helpers import SEGMENTS, make_spec

from mcgen.inspect_report import format_quantity, inspect_spec, render_report
from mcgen.ir.errors import IRError
from mcgen.ir.graph import lower
from mcgen.passes.cost import annotate_cost, attention_cost, cost_table, visible_per_token
from mcgen.passes.pipeline import compile_spec
from mcgen.segments import mean_visible
from mcgen.spec import Spec

cost_spec = partial(make_spec, name="c", segments=SEGMENTS["constant"], heads=1, d_model=32)


def costed(spec: Spec, seq_len: int = 16, batch: int = 1):
    return annotate_cost(lower(spec), seq_len, batch)


def flops(graph, node: str) -> float:
    return graph.nodes[node]["cost"]["flops_per_token"]


def test_visible_counts_constant() -> None:
    counts = visible_per_token("constant", 4, None, 16)
    assert counts == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    assert sum(counts) / 16 == pytest.approx((12 + 8 + 4) / 16)
    assert sum(counts) / 16 == pytest.approx(mean_visible("constant", 4, None, 16))


def test_visible_counts_logarithmic() -> None:
    # Ends 2, 4, 8, 16: read by 14, 12, 8 and 0 tokens.
    counts = visible_per_token("logarithmic", 2, None, 16)
    assert sum(counts) == 14 + 12 + 8
    assert counts[:5] == [0, 0, 1, 1, 2]


def test_grm_by_hand() -> None:
    # C=4, T=16, K=V=8, chunk 4: mean visible 1.5, 4 complete segments.
    graph = costed(cost_spec(aggregation="grm"))
    kv = 64
    assert flops(graph, "scan") == 2 * kv + 4 * (8 + 8)  # update + intra-chunk = 192
    assert flops(graph, "read_online") == 2 * kv
    assert flops(graph, "read_cached") == pytest.approx(2 * kv * 1.5)  # 192
    assert flops(graph, "pool") == 2 * 8  # mean: sum and divide
    assert flops(graph, "gate") == pytest.approx(2 * 8 * 2.5)  # 1.5 cached + online
    assert flops(graph, "aggregate") == pytest.approx(2 * 8 * 2.5)
    cost = graph.graph["cost"]
    assert cost["mean_visible"] == pytest.approx(1.5)
    assert cost["cached_segments"] == 4
    assert cost["flops_per_token_per_head"] == pytest.approx(608)
    assert cost["flops"] == pytest.approx(608 * 16)
    # Decode: online 64 + 4 states * 64 + 4 descriptors * 8 + the online prefix sum 8.
    assert cost["decode_state_numbers_per_head"] == 64 + 256 + 32 + 8 == 360
    assert cost["decode_state_bytes"] == 360 * 4
    assert cost["training_memory_numbers_per_head"] == 4 * 64
    assert cost["training_memory_bytes"] == 4 * 64 * 4


def test_totals_scale_with_heads_and_batch() -> None:
    one = costed(cost_spec(heads=1)).graph["cost"]
    many = costed(cost_spec(heads=2), batch=3).graph["cost"]
    assert many["flops_per_token_per_head"] == one["flops_per_token_per_head"]
    assert many["flops"] == pytest.approx(one["flops"] * 6)
    assert many["decode_state_bytes"] == one["decode_state_bytes"] * 6
    assert many["training_memory_bytes"] == one["training_memory_bytes"] * 6
    assert many["bytes"] == pytest.approx(one["bytes"] * 6)


def test_bytes_by_hand() -> None:
    graph = costed(cost_spec(aggregation="grm"))
    assert graph.nodes["q"]["cost"]["bytes"] == 2 * 8 * 16  # bf16 K per token
    assert graph.nodes["out"]["cost"]["bytes"] == 2 * 8 * 16
    assert graph.nodes["scan"]["cost"]["bytes"] == 2 * 4 * 64 * 4  # load+store per chunk, 4 chunks
    assert graph.nodes["cache"]["cost"]["bytes"] == 4 * 64 * 4  # 4 snapshots
    # Chunks of 4 see 0, 1, 2, 3 cached states: 6 state loads.
    assert graph.nodes["read_cached"]["cost"]["bytes"] == 4 * 64 * 6


def test_decode_and_training_without_a_cache() -> None:
    cost = costed(cost_spec(aggregation="none")).graph["cost"]
    assert cost["decode_state_numbers_per_head"] == 64
    assert cost["training_memory_bytes"] == 0
    residual = costed(cost_spec(aggregation="residual")).graph["cost"]
    assert residual["decode_state_numbers_per_head"] == 64 + 4 * 64  # no descriptors


def test_delta_rules_pay_for_s_k() -> None:
    linear = costed(cost_spec(recurrence="linear"))
    delta = costed(cost_spec(recurrence="delta"))
    assert flops(delta, "scan") - flops(linear, "scan") == 2 * 64


def test_ssc_is_cheaper_than_grm_when_top_k_is_below_visible() -> None:
    grm = costed(cost_spec(aggregation="grm"))
    ssc = costed(cost_spec(aggregation="ssc", aggregation_extra=", top_k: 1"))
    # mean of min(1, visible) over 0,0,0,0,1,1,1,1,2,2,2,2,3,3,3,3 = 12/16
    assert ssc.graph["cost"]["mean_read"] == pytest.approx(0.75)
    assert flops(ssc, "read_cached") == pytest.approx(2 * 64 * 0.75)
    assert flops(ssc, "gate") == flops(grm, "gate")  # top-k still scores every segment
    assert ssc.graph["cost"]["flops"] < grm.graph["cost"]["flops"]
    # A top_k no token exceeds reads what grm reads.
    wide = costed(cost_spec(aggregation="ssc", aggregation_extra=", top_k: 3"))
    assert wide.graph["cost"]["flops"] == pytest.approx(grm.graph["cost"]["flops"])


def test_attention_baseline() -> None:
    attn = attention_cost(heads=1, key_dim=8, value_dim=8, seq_len=16)
    assert attn["decode_state_numbers_per_head"] == 2 * 16 * 8  # 2*T*K when K == V
    assert attn["decode_state_bytes"] == 2 * 2 * 16 * 8  # bf16
    # Mean causal context (T+1)/2 keys, 2(K+V) FLOPs each.
    assert attn["flops_per_token_per_head"] == pytest.approx(2 * 16 * 17 / 2)
    assert attn["flops"] == pytest.approx(16 * 17 * 16)
    assert attention_cost(4, 8, 8, 16, batch=2)["flops"] == pytest.approx(attn["flops"] * 8)


def test_cost_table_compares_with_attention() -> None:
    graph = costed(cost_spec())
    rows = {row.metric: row for row in cost_table(graph)}
    decode = rows["decode state per head (numbers)"]
    assert (decode.spec, decode.attention) == (360, 256)
    assert decode.ratio == pytest.approx(360 / 256)
    per_token = rows["FLOPs per token (all heads)"]
    assert per_token.spec == pytest.approx(608) and per_token.attention == pytest.approx(272)
    with pytest.raises(IRError, match="annotate_cost"):
        cost_table(lower(cost_spec()))


def test_linear_attention_rewrite_is_cheaper() -> None:
    spec = cost_spec(aggregation="residual", init="independent")
    before = costed(spec, seq_len=64).graph["cost"]
    after = compile_spec(spec, seq_len=64).after.graph["cost"]
    assert after["flops"] < before["flops"]
    assert after["decode_state_bytes"] < before["decode_state_bytes"]
    assert after["training_memory_bytes"] == 0 < before["training_memory_bytes"]


def test_inspect_report_json_and_rendering() -> None:
    spec = cost_spec(aggregation="soup", chunk_size=64)
    report = inspect_spec(spec, seq_len=4096)
    data = json.loads(json.dumps(report.to_json()))
    assert data["notes"][0].startswith("soup_to_grm")
    assert "kind=soup" in data["ir"]["before"]["text"]
    assert "kind=grm" in data["ir"]["after"]["text"]
    assert data["ir"]["after"]["dot"].startswith('digraph "c"')
    assert {row["metric"] for row in data["cost"]["table"]} >= {"FLOPs total", "decode state"}
    console = Console(record=True, width=140)
    render_report(report, console)
    shown = console.export_text()
    assert "soup_to_grm" in shown and "FLOP" in shown and "softmax attention" in shown


def test_format_quantity() -> None:
    assert format_quantity(1.2e9, "FLOP") == "1.2 GFLOP"
    assert format_quantity(3.4 * 2**20, "B") == "3.4 MiB"
    assert format_quantity(512, "B") == "512 B"
    assert format_quantity(360, "") == "360"
    assert format_quantity(70_700, "") == "70.7 k"
