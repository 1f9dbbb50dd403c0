"""The generated packages compute docs/method.md: backends against the reference, and the
identities of method.md section 5, on tiny specs covering every matrix-memory variant."""

from __future__ import annotations

import importlib
import itertools

import pytest
import torch
from spec_helpers import MATRIX_RECURRENCES

from mcgen.segments import segment_ends

RECURRENCES = MATRIX_RECURRENCES
SEGMENTS = {
    "constant": "{kind: constant, length: 8}",
    "logarithmic": "{kind: logarithmic, length: 4}",
    "explicit": "{kind: explicit, boundaries: [3, 9, 10, 20]}",
    "none": "{kind: none}",
}
AGGREGATIONS = {
    "none": ("none", ""),
    "residual": ("residual", ""),
    "grm": ("grm", ""),
    "grm_query_sum": ("grm", ", connector: query, pool: sum"),
    "soup": ("soup", ""),
    "ssc": ("ssc", ", top_k: 2"),
}
SEQ_LEN = 29  # past several segments of every kind above, ending mid-segment and mid-chunk


def _package(
    build_tiny, recurrence="linear", segments="constant", init="checkpoint", agg="grm", **kw
):
    kind, extra = AGGREGATIONS[agg]
    return build_tiny(
        recurrence=recurrence,
        segments=SEGMENTS[segments],
        init=init,
        aggregation=kind,
        aggregation_extra=extra,
        **kw,
    )


def _selftest(package):
    return importlib.import_module(f"{package.__name__}.selftest")


def _inputs(package, *, batch=2, seq_len=SEQ_LEN, heads=2, key_dim=8, value_dim=8, seed=0):
    return _selftest(package).make_inputs(
        batch, seq_len, heads, key_dim, value_dim, dtype=torch.float64, seed=seed
    )


def _rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _causal_linear_attention(q, k, v, scale):
    """o_t = sum_{j<=t} (scale q_t . k_j) v_j, written directly."""
    scores = torch.einsum("bthk,bshk->bhts", q * scale, k)
    mask = torch.ones(q.shape[1], q.shape[1], dtype=torch.bool).tril()
    return torch.einsum("bhts,bshv->bthv", scores.masked_fill(~mask, 0), v)


def _base_rnn(recurrence, x, scale):
    """The recurrence of method.md section 3 with no caching, as a plain loop per (b, h)."""
    q, k, v = x["q"], x["k"], x["v"]
    batch, seq_len, heads, key_dim = q.shape
    out = torch.zeros(batch, seq_len, heads, v.shape[-1], dtype=torch.float64)
    eye = torch.eye(key_dim, dtype=torch.float64)
    for b, h in itertools.product(range(batch), range(heads)):
        state = torch.zeros(v.shape[-1], key_dim, dtype=torch.float64)
        previous = torch.zeros_like(state)  # swla: v_{t-1} k_{t-1}^T
        for t in range(seq_len):
            kt, vt = k[b, t, h], v[b, t, h]
            rate = {name: x[name][b, t, h] for name in ("g", "beta", "beta_prev") if name in x}
            decay = torch.exp(rate["g"]) if "g" in rate else 1.0
            write = torch.outer(vt, kt)
            if recurrence == "swla":
                state = decay * state + rate["beta_prev"] * previous + rate["beta"] * write
                previous = write
            elif "beta" in rate:
                erase = eye - rate["beta"] * torch.outer(kt, kt)
                state = decay * state @ erase + rate["beta"] * write
            else:
                state = decay * state + write
            out[b, t, h] = state @ (scale * q[b, t, h])
    return out


# -- 2. the torch backend matches the reference, outputs and gradients ----------------------


@pytest.mark.parametrize("agg", list(AGGREGATIONS))
@pytest.mark.parametrize("init", ["checkpoint", "independent"])
@pytest.mark.parametrize("segments", list(SEGMENTS))
@pytest.mark.parametrize("recurrence", RECURRENCES)
def test_torch_backend_matches_reference_fp64(build_tiny, recurrence, segments, init, agg):
    package = _package(build_tiny, recurrence, segments, init, agg)
    # fp64 leaves the algorithm as the only difference: the chunked form must be exact.
    checks = _selftest(package).check_against_reference(
        "torch", torch.float64, (2, SEQ_LEN, 2, 8, 8), seed=3
    )
    assert [c.quantity for c in checks][:4] == ["output", "grad q", "grad k", "grad v"]
    for check in checks:
        assert check.error < 1e-10, check


@pytest.mark.parametrize("agg", ["grm", "ssc", "residual"])
@pytest.mark.parametrize("recurrence", RECURRENCES)
def test_torch_backend_fp32_bf16_odd_shapes(build_tiny, recurrence, agg):
    package = _package(build_tiny, recurrence, "logarithmic", "checkpoint", agg)
    selftest = _selftest(package)
    for dtype in (torch.float32, torch.bfloat16):
        # K != V, neither a power of two, T a multiple of neither chunk nor segment length.
        for check in selftest.check_against_reference("torch", dtype, (1, 23, 3, 5, 7)):
            assert check.passed, check


# -- 3. whole sequence == pieces with the cache == prefill + decode ----------------------------


@pytest.mark.parametrize("agg", list(AGGREGATIONS))
@pytest.mark.parametrize("init", ["checkpoint", "independent"])
@pytest.mark.parametrize("segments", list(SEGMENTS))
@pytest.mark.parametrize("recurrence", RECURRENCES)
def test_whole_equals_pieces_equals_decode(build_tiny, recurrence, segments, init, agg):
    package = _package(build_tiny, recurrence, segments, init, agg)
    checks = _selftest(package).check_streaming("torch", torch.float64, (2, SEQ_LEN, 2, 8, 8))
    assert [c.quantity for c in checks] == ["pieces", "decode"]
    for check in checks:
        assert check.error < 1e-12, check


def test_pieces_cut_exactly_at_segment_boundaries(build_tiny):
    package = _package(build_tiny, "gated_delta", "constant", "independent", "ssc")
    x = _inputs(package)
    whole = package.mc_forward(**x)
    cache, outs = None, []
    for a, b in [(0, 8), (8, 16), (16, 17), (17, SEQ_LEN)]:
        part = {n: t[:, a:b] for n, t in x.items()}
        o, cache = package.mc_forward(**part, initial_cache=cache, output_cache=True)
        outs.append(o)
    assert _rel(torch.cat(outs, 1), whole) < 1e-12
    assert cache.position == SEQ_LEN
    assert cache.num_cached == 3  # segments ending at 8, 16 and 24


# -- 4. the identities of method.md section 5 --------------------------------------------------


@pytest.mark.parametrize("segments", list(SEGMENTS))
def test_none_checkpoint_linear_is_causal_linear_attention(build_tiny, segments):
    package = _package(build_tiny, "linear", segments, "checkpoint", "none")
    x = _inputs(package)
    expected = _causal_linear_attention(x["q"], x["k"], x["v"], 8**-0.5)
    assert _rel(package.reference(**x), expected) < 1e-12
    assert _rel(package.mc_forward(**x), expected) < 1e-12


@pytest.mark.parametrize("recurrence", RECURRENCES)
def test_none_checkpoint_is_the_base_rnn(build_tiny, recurrence):
    package = _package(build_tiny, recurrence, "constant", "checkpoint", "none")
    x = _inputs(package, batch=1, seq_len=13)
    expected = _base_rnn(recurrence, x, 8**-0.5)
    assert _rel(package.reference(**x), expected) < 1e-12
    assert _rel(package.mc_forward(**x), expected) < 1e-12


@pytest.mark.parametrize("segments", ["constant", "logarithmic", "explicit"])
def test_residual_independent_linear_is_linear_attention(build_tiny, segments):
    package = _package(build_tiny, "linear", segments, "independent", "residual")
    x = _inputs(package)
    expected = _causal_linear_attention(x["q"], x["k"], x["v"], 8**-0.5)
    # The reference sums independent segment memories as written; the backend runs the
    # single running state the linear_attention pass rewrote it to.
    assert _rel(package.reference(**x), expected) < 1e-12
    assert _rel(package.mc_forward(**x), expected) < 1e-12
    assert package.MCLayer().state_size(1000) == 2 * 8 * 8  # one state per head at decode


@pytest.mark.parametrize("init", ["checkpoint", "independent"])
@pytest.mark.parametrize("recurrence", RECURRENCES)
def test_soup_equals_grm(build_tiny, recurrence, init):
    soup = _package(build_tiny, recurrence, "logarithmic", init, "soup")
    grm = _package(build_tiny, recurrence, "logarithmic", init, "grm")
    x = _inputs(soup)
    # Two different transcriptions: mix states then read, versus read then mix.
    assert _rel(soup.reference(**x), grm.reference(**x)) < 1e-12
    assert _rel(soup.mc_forward(**x), grm.reference(**x)) < 1e-12


@pytest.mark.parametrize("recurrence", RECURRENCES)
def test_ssc_with_k_at_least_segments_equals_grm(build_tiny, recurrence):
    grm = _package(build_tiny, recurrence, "constant", "checkpoint", "grm")
    x = _inputs(grm)  # 29 tokens, segments of 8: at most 3 cached segments are visible
    for top_k in (3, 5):
        ssc = build_tiny(
            recurrence=recurrence,
            segments=SEGMENTS["constant"],
            aggregation="ssc",
            aggregation_extra=f", top_k: {top_k}",
        )
        assert _rel(ssc.reference(**x), grm.reference(**x)) < 1e-12
        assert _rel(ssc.mc_forward(**x), grm.reference(**x)) < 1e-12
    # ... and with fewer it really is sparse: the identity above is not vacuous.
    sparse = _package(build_tiny, recurrence, "constant", "checkpoint", "ssc")  # top_k 2
    assert _rel(sparse.reference(**x), grm.reference(**x)) > 1e-6


def test_ssc_gradient_flows_through_selected_logits_only(build_tiny):
    package = build_tiny(aggregation="ssc", aggregation_extra=", top_k: 1")
    x = _inputs(package, batch=1, seq_len=17, heads=1)
    u = x.pop("u").requires_grad_(True)
    package.mc_forward(**x, u=u)[:, 16].sum().backward()
    # Token 16 sees cached segments 0 and 1 but routes to one: its connector gradient is
    # that of a softmax over {online, chosen}, so it matches grm restricted to that choice.
    assert torch.isfinite(u.grad).all()
    assert u.grad[:, :16].abs().max() == 0  # earlier connectors do not touch token 16
    assert u.grad[:, 16].abs().max() > 0


# -- the segment rule of the generated packages agrees with mcgen's ---------------------------


@pytest.mark.parametrize("segments", ["constant", "logarithmic", "explicit", "none"])
def test_generated_segment_rule_matches_mcgen(build_tiny, segments):
    package = _package(build_tiny, "linear", segments, "checkpoint", "grm")
    spec_module = importlib.import_module(f"{package.__name__}.spec")
    seg = package.SPEC["cache"]["segments"]
    ends = segment_ends(seg["kind"], seg["length"], seg["boundaries"], 10_000)
    for pos in range(200):
        assert spec_module.segments_before(pos) == sum(e <= pos for e in ends)
        assert spec_module.segment_end(pos) == next((e for e in ends if e > pos), None)
        assert spec_module.segment_start(pos) == max([0] + [e for e in ends if e <= pos])


# -- the layer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("agg", ["none", "residual", "grm", "ssc"])
@pytest.mark.parametrize("recurrence", ["linear", "gated_delta"])
def test_state_size_counts_what_decode_holds(build_tiny, recurrence, agg):
    package = _package(build_tiny, recurrence, "constant", "checkpoint", agg)
    x = _inputs(package, batch=1, seq_len=21)
    _, cache = package.mc_forward(**x, output_cache=True)
    assert package.MCLayer().state_size(21) == cache.numel()


@pytest.mark.parametrize("recurrence", RECURRENCES)
def test_layer_forward_backward(build_tiny, recurrence):
    package = _package(build_tiny, recurrence, "constant", "checkpoint", "grm")
    torch.manual_seed(0)
    layer = package.MCLayer(24, layer_idx=3, heads=3, key_dim=5, value_dim=6)
    x = torch.randn(2, 19, 24, requires_grad=True)
    y = layer(x)
    assert y.shape == (2, 19, 24) and layer.layer_idx == 3
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in layer.parameters())


def test_clear_errors_for_bad_calls(build_tiny):
    package = build_tiny(recurrence="decay")
    x = _inputs(package, batch=1, seq_len=5)
    with pytest.raises(ValueError, match="needs u"):
        package.mc_forward(x["q"], x["k"], x["v"], g=x["g"])
    with pytest.raises(TypeError, match="unexpected keyword argument 'beta'"):
        package.mc_forward(**x, beta=torch.rand(1, 5, 2))  # a rate this recurrence lacks
    with pytest.raises(ValueError, match=r"g must have shape \[1, 5, 2\]"):
        package.mc_forward(**{**x, "g": x["g"][:, :4]})
    with pytest.raises(ValueError, match="q must be"):
        package.mc_forward(**{**x, "q": x["q"][0]})
    deep = build_tiny(recurrence="titans", deep="{minibatch: 2}")  # no Triton kernels
    with pytest.raises(NotImplementedError, match="no triton kernels"):
        deep.mc_forward(**_inputs(deep, batch=1, seq_len=5), backend="triton")
    with pytest.raises(ValueError, match="backend must be"):
        package.mc_forward(**x, backend="cuda")
    _, cache = package.mc_forward(**x, output_cache=True)
    with pytest.raises(ValueError, match="cache state"):
        package.mc_forward(**{n: t[:, :, :1] for n, t in x.items()}, initial_cache=cache)
