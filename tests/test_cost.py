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


# --- deep memories ----------------------------------------------------------------------

# K = V = 4, expansion 2 (Dh = 8), depth 2: P = K*Dh + Dh*V = 32 + 32 = 64 weights per head.
# With C=4, T=16, chunk 4 as above: mean visible 1.5, 4 complete segments.
deep_cost_spec = partial(cost_spec, key_dim=4, value_dim=4)
P = 64


def test_deep_grm_by_hand() -> None:
    graph = costed(deep_cost_spec(recurrence="dla", aggregation="grm"))
    assert graph.nodes["scan"]["op"].params == P
    # Inner gradient 3 * 2P, then the step W <- W - theta g: 2P.
    assert flops(graph, "scan") == 6 * P + 2 * P == 512
    assert flops(graph, "read_online") == 2 * P == 128
    assert flops(graph, "read_cached") == pytest.approx(2 * P * 1.5) == 192  # one MLP read each
    assert flops(graph, "pool") == 2 * 4
    assert flops(graph, "gate") == pytest.approx(2 * 4 * 2.5)  # 20
    assert flops(graph, "aggregate") == pytest.approx(2 * 4 * 2.5)  # mix the 2.5 outputs: 20
    cost = graph.graph["cost"]
    assert (cost["memory"], cost["state_numbers_per_head"]) == ("deep", P)
    assert cost["flops_per_token_per_head"] == pytest.approx(512 + 128 + 192 + 8 + 20 + 20) == 880
    # Decode: online weights 64 + 4 cached * 64 + 4 descriptors * 4 + the prefix sum 4.
    assert cost["decode_state_numbers_per_head"] == 64 + 256 + 16 + 4 == 340
    assert cost["training_memory_numbers_per_head"] == 4 * P
    # Bytes: fp32 weights, loaded and stored per chunk (4 chunks), cached 4 times, and the
    # chunks see 0 + 1 + 2 + 3 = 6 cached memories.
    assert graph.nodes["scan"]["cost"]["bytes"] == 2 * 4 * P * 4
    assert graph.nodes["cache"]["cost"]["bytes"] == 4 * P * 4
    assert graph.nodes["read_cached"]["cost"]["bytes"] == 4 * P * 6
    assert graph.nodes["weights"]["cost"]["bytes"] == 4 * P  # read once (init checkpoint)


def test_deep_soup_mixes_weights_then_reads_once() -> None:
    grm = costed(deep_cost_spec(recurrence="dla", aggregation="grm"))
    soup = costed(deep_cost_spec(recurrence="dla", aggregation="soup"))
    # The reads hand their weights over (no arithmetic); the aggregate mixes the 1.5 visible
    # memories and the online one (2P each), then reads the mixture once (2P).
    assert flops(soup, "read_online") == 0 and flops(soup, "read_cached") == 0
    assert flops(soup, "aggregate") == pytest.approx(2 * P * 2.5 + 2 * P) == 448
    assert soup.graph["cost"]["flops_per_token_per_head"] == pytest.approx(512 + 8 + 20 + 448)
    # grm: 2.5 reads (320) and the mix of their outputs (20) = 340; soup: 448. With reads and
    # mixes both 2P per memory, soup pays one more read and saves mixing outputs:
    # 2P - 2V(N+1) = 128 - 20 = 108 more FLOPs per token here.
    read_grm = sum(flops(grm, n) for n in ("read_online", "read_cached", "aggregate"))
    read_soup = sum(flops(soup, n) for n in ("read_online", "read_cached", "aggregate"))
    assert (read_grm, read_soup) == (pytest.approx(340), pytest.approx(448))
    assert soup.graph["cost"]["flops_per_token_per_head"] == pytest.approx(988)
    assert soup.graph["cost"]["flops_per_token_per_head"] - grm.graph["cost"][
        "flops_per_token_per_head"
    ] == pytest.approx(2 * P - 2 * 4 * 2.5)
    # Both load every visible memory's weights per chunk, and keep the same state.
    assert soup.nodes["read_cached"]["cost"]["bytes"] == grm.nodes["read_cached"]["cost"]["bytes"]
    for key in ("bytes", "decode_state_numbers_per_head", "training_memory_numbers_per_head"):
        assert soup.graph["cost"][key] == grm.graph["cost"][key]


def test_deep_residual_and_ssc() -> None:
    residual = costed(deep_cost_spec(recurrence="dla", aggregation="residual"))
    assert flops(residual, "read_cached") == pytest.approx(2 * P * 1.5)
    assert flops(residual, "aggregate") == pytest.approx(4 * 1.5)  # add the cached outputs
    assert residual.graph["cost"]["decode_state_numbers_per_head"] == 5 * P  # no descriptors
    ssc = costed(
        deep_cost_spec(recurrence="dla", aggregation="ssc", aggregation_extra=", top_k: 1")
    )
    assert flops(ssc, "read_cached") == pytest.approx(2 * P * 0.75)  # min(1, visible)


def test_titans_by_hand() -> None:
    titans = costed(deep_cost_spec(recurrence="titans", aggregation="grm"))
    # Inner gradient 6P, momentum S <- eta S - theta g (2P), decayed W <- (1 - alpha) W + S (2P).
    assert flops(titans, "scan") == 10 * P == 640
    # The weights and the momentum, loaded and stored per chunk.
    assert titans.nodes["scan"]["cost"]["bytes"] == 2 * 4 * P * 2 * 4
    # Decode holds the momentum beside the online weights: 340 + 64.
    assert titans.graph["cost"]["decode_state_numbers_per_head"] == 340 + P == 404
    assert titans.graph["cost"]["training_memory_numbers_per_head"] == 4 * P
    # A constant momentum of 0 leaves nothing to hold.
    plain = costed(
        deep_cost_spec(recurrence="titans", aggregation="grm", deep="{momentum: 0.0}")
    ).graph["cost"]
    assert plain["decode_state_numbers_per_head"] == 340


def test_deep_minibatch_and_independent_segments() -> None:
    spec = deep_cost_spec(recurrence="titans", aggregation="grm", deep="{minibatch: 2}")
    cost = costed(spec).graph["cost"]
    # Decode adds the weights at the mini-batch's start; training the mini-batch's gradient
    # factors (K->Dh->V: (4 + 8) + (8 + 4) = 24 per token) and three 2 x 2 mixing matrices.
    assert cost["decode_state_numbers_per_head"] == 404 + P
    assert cost["training_memory_numbers_per_head"] == 4 * P + 2 * 24 + 3 * 4
    assert cost["training_memory_bytes"] == 4 * (4 * P + 60)
    dla = costed(deep_cost_spec(recurrence="dla", aggregation="grm", deep="{minibatch: 2}"))
    assert dla.graph["cost"]["training_memory_numbers_per_head"] == 4 * P + 2 * 24  # no mixes
    # init independent restarts from the initial weights at each of the 4 segments.
    independent = costed(deep_cost_spec(recurrence="dla", aggregation="grm", init="independent"))
    assert independent.nodes["weights"]["cost"]["bytes"] == 4 * P * 4


def test_deep_decode_scales_with_heads_and_batch() -> None:
    one = costed(deep_cost_spec(recurrence="titans", aggregation="soup")).graph["cost"]
    many = costed(deep_cost_spec(recurrence="titans", aggregation="soup", heads=2), batch=3).graph[
        "cost"
    ]
    assert many["decode_state_bytes"] == one["decode_state_bytes"] * 6
    assert many["flops"] == pytest.approx(one["flops"] * 6)
    assert many["bytes"] == pytest.approx(one["bytes"] * 6)


def test_inspect_report_for_a_deep_soup() -> None:
    report = inspect_spec(deep_cost_spec(recurrence="titans", aggregation="soup"), seq_len=64)
    assert report.notes == []  # soup stays soup for a deep memory
    assert "kind=soup" in report.text_after and "form=weights" in report.text_after
    assert "MLP K->Dh->V (depth 2)" in report.text_after
    assert report.memory.startswith("deep (titans): MLP K->Dh->V (depth 2)")
    assert "64 weights per head" in report.memory and "soup mixes" in report.memory
    assert "momentum=data" in report.memory
    assert report.cost_after["memory"] == "deep"
    data = json.loads(json.dumps(report.to_json()))
    assert data["memory"] == report.memory
    console = Console(record=True, width=200)
    render_report(report, console)
    shown = console.export_text()
    assert "memory: deep (titans)" in shown and "no rewrites" in shown
    matrix = inspect_spec(cost_spec(aggregation="grm"), seq_len=64)
    assert matrix.memory == "matrix (linear): one 8 x 8 state per head"


def test_format_quantity() -> None:
    assert format_quantity(1.2e9, "FLOP") == "1.2 GFLOP"
    assert format_quantity(3.4 * 2**20, "B") == "3.4 MiB"
    assert format_quantity(512, "B") == "512 B"
    assert format_quantity(360, "") == "360"
    assert format_quantity(70_700, "") == "70.7 k"
