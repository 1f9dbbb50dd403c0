"""Misuse of a generated package is refused with one clear line (issue 12, items 3 and 14):
inputs that contradict each other or the spec, dtypes the package cannot compute in, a cache
from another stream or spec, bad cu_seqlens, a mistaken MCLayer call; and a non-finite input
never reaches the outputs of earlier tokens."""

from __future__ import annotations

import importlib

import pytest
import torch
from spec_helpers import MATRIX_RECURRENCES

# heads 2, key_dim 8, value_dim 8 (spec_helpers' defaults); every input q, k, v, u, g, beta.
FULL = {"recurrence": "gated_delta", "aggregation": "grm"}
DEEP = {"recurrence": "titans", "deep": "{minibatch: 4}", "aggregation": "grm"}
BAD_DTYPES = [torch.int64, torch.int32, torch.bool, torch.uint8, torch.complex64]
ACCEPTED = "float32, float64, bfloat16, float16"


def _inputs(package, batch=1, seq_len=5, *, heads=2, key_dim=8, value_dim=8, dtype=torch.float64):
    selftest = importlib.import_module(f"{package.__name__}.selftest")
    return selftest.make_inputs(batch, seq_len, heads, key_dim, value_dim, dtype=dtype)


def _step(x, t=0):
    """mc_step's arguments for token t of mc_forward's inputs."""
    return {n: v for n, v in x.items() if n == "weights"} | {
        f"{n}_t": v[:, t] for n, v in x.items() if n != "weights"
    }


def _as(x, dtype):
    """A tensor of dtype holding x's values where they fit (or a complex copy)."""
    return x.to(dtype) if dtype.is_complex else (x * 3).round().to(dtype)


# -- shapes: heads-first, contradictions, the spec's sizes in every message --------------------


@pytest.mark.parametrize("spec", [FULL, DEEP], ids=["matrix", "deep"])
def test_heads_first_inputs_are_refused(build_tiny, spec):
    package = build_tiny(**spec)
    x = _inputs(package, seq_len=5)
    heads_first = {n: v if n == "weights" else v.transpose(1, 2) for n, v in x.items()}
    with pytest.raises(ValueError, match=r"\[1, 2, 5, 8\] looks heads-first.*H = 2"):
        package.mc_forward(**heads_first)


@pytest.mark.parametrize("spec", [FULL, DEEP], ids=["matrix", "deep"])
def test_other_head_counts_run_when_named(build_tiny, spec):
    # The package runs at other sizes than its spec's (the ladder's --shape, MCLayer(heads=...)):
    # 3 heads over 2 tokens reads like heads-first until heads=3 says what is meant.
    package = build_tiny(**spec)
    x = _inputs(package, seq_len=2, heads=3)
    with pytest.raises(ValueError, match="heads-first"):
        package.mc_forward(**x)
    assert package.mc_forward(**x, heads=3).shape[:3] == (1, 2, 3)
    with pytest.raises(ValueError, match=r"heads=2.*q has 3 heads"):
        package.mc_forward(**x, heads=2)
    other = _inputs(package, seq_len=7, heads=3)  # T != the spec's H: no ambiguity
    assert package.mc_forward(**other).shape[:3] == (1, 7, 3)


def test_shape_contradictions_name_the_spec_sizes(build_tiny):
    package = build_tiny(**FULL)
    x = _inputs(package)
    with pytest.raises(ValueError, match=r"k must have shape \[1, 5, 2, 8\].*got \[1, 5, 2, 7\]"):
        package.mc_forward(**{**x, "k": x["k"][..., :7]})
    with pytest.raises(ValueError, match=r"v must be .*got \[1, 5, 1, 8\].*H = 2, K = 8, V = 8"):
        package.mc_forward(**{**x, "v": x["v"][:, :, :1]})
    with pytest.raises(ValueError, match=r"q must be \[B, T, H, K\].*got shape \[5, 2, 8\]"):
        package.mc_forward(**{**x, "q": x["q"][0]})
    with pytest.raises(ValueError, match=r"q_t must be \[B, H, K\].*got shape \[1, 1, 2, 8\]"):
        package.mc_step(**{**_step(x), "q_t": x["q"][:, :1]})
    with pytest.raises(ValueError, match=r"beta_t must have shape \[1, 2\]"):
        package.mc_step(**{**_step(x), "beta_t": x["beta"][:, :2]})


# -- dtypes and devices --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=str)
@pytest.mark.parametrize("name", ["q", "k", "v", "u", "g", "beta"])
def test_non_float_inputs_are_refused(build_tiny, name, dtype):
    package = build_tiny(**FULL)
    x = _inputs(package)
    bad = {**x, name: _as(x[name], dtype)}
    with pytest.raises(TypeError, match=rf"{name} has dtype {dtype}.*{ACCEPTED}"):
        package.mc_forward(**bad)
    with pytest.raises(TypeError, match=rf"{name}_t has dtype {dtype}.*{ACCEPTED}"):
        package.mc_step(**_step(bad))


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=str)
@pytest.mark.parametrize("name", ["q", "v", "beta", "eta", "weights"])
def test_deep_memory_refuses_non_float_inputs(build_tiny, name, dtype):
    package = build_tiny(**DEEP)
    x = _inputs(package)
    spoilt = [_as(w, dtype) for w in x[name]] if name == "weights" else _as(x[name], dtype)
    bad = {**x, name: spoilt}
    label = "weights\\[0\\]" if name == "weights" else name
    with pytest.raises(TypeError, match=rf"{label} has dtype {dtype}.*{ACCEPTED}"):
        package.mc_forward(**bad)


@pytest.mark.parametrize("spec", [FULL, DEEP], ids=["matrix", "deep"])
def test_mixed_dtypes_are_refused(build_tiny, spec):
    package = build_tiny(**spec)
    x = _inputs(package, dtype=torch.float32)
    with pytest.raises(TypeError, match=r"k has dtype torch.float64 but q has torch.float32"):
        package.mc_forward(**{**x, "k": x["k"].double()})
    with pytest.raises(TypeError, match=r"u_t has dtype torch.bfloat16 but q_t has torch.float32"):
        package.mc_step(**_step({**x, "u": x["u"].bfloat16()}))
    # Gates may come in another float dtype: MCLayer computes them in fp32 for bf16 inputs.
    assert package.mc_forward(**{**x, "beta": x["beta"].double()}).dtype == torch.float32


@pytest.mark.parametrize("spec", [FULL, DEEP], ids=["matrix", "deep"])
def test_inputs_on_another_device_are_refused(build_tiny, spec):
    package = build_tiny(**spec)
    x = _inputs(package)
    with pytest.raises(ValueError, match=r"v is on meta, q on cpu"):
        package.mc_forward(**{**x, "v": x["v"].to("meta")})


# -- caches ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [FULL, DEEP], ids=["matrix", "deep"])
def test_bad_caches_are_refused(build_tiny, spec):
    package = build_tiny(**spec)
    x = _inputs(package)
    _, cache = package.mc_forward(**x, output_cache=True)
    with pytest.raises(ValueError, match=r"initial_cache \S+ is \[1, 2.*these inputs need \[2, 2"):
        package.mc_forward(**_inputs(package, batch=2), initial_cache=cache)
    with pytest.raises(ValueError, match=r"cache \S+ is \[1, 2.*these inputs need \[1, 3"):
        package.mc_step(**_step(_inputs(package, heads=3)), cache=cache)
    with pytest.raises(TypeError, match=r"cache holds torch.float64 .*float32 inputs"):
        package.mc_step(**_step(_inputs(package, dtype=torch.float32)), cache=cache)
    with pytest.raises(TypeError, match=r"initial_cache must be this package's MCCache.*got list"):
        package.mc_forward(**x, initial_cache=[cache])
    on_meta = _inputs(package)
    with pytest.raises(ValueError, match=r"cache is on cpu, the inputs on meta"):
        package.mc_step(**_step({n: _meta(v) for n, v in on_meta.items()}), cache=cache)


def _meta(x):
    return [w.to("meta") for w in x] if isinstance(x, list) else x.to("meta")


def test_a_cache_from_another_spec_is_refused(build_tiny):
    package = build_tiny(**FULL)
    other = build_tiny(recurrence="gated_delta", aggregation="residual")
    x = _inputs(package)
    _, cache = other.mc_forward(**{n: v for n, v in x.items() if n != "u"}, output_cache=True)
    with pytest.raises(TypeError, match=rf"MCCache \({package.__name__}.cache\).*{other.__name__}"):
        package.mc_step(**_step(x), cache=cache)


def test_bad_cu_seqlens_are_refused(build_tiny):
    package = build_tiny(**FULL)
    x = _inputs(package, seq_len=10)
    with pytest.raises(TypeError, match=r"cu_seqlens must hold integers, got torch.float32"):
        package.mc_forward(**x, cu_seqlens=torch.tensor([0.0, 4.0, 10.0]))
    with pytest.raises(TypeError, match=r"cu_seqlens must hold integers, got 4.5"):
        package.mc_forward(**x, cu_seqlens=[0, 4.5, 10])
    with pytest.raises(ValueError, match=r"cu_seqlens must be 1-D .*got shape \[1, 3\]"):
        package.mc_forward(**x, cu_seqlens=torch.tensor([[0, 4, 10]]))
    with pytest.raises(ValueError, match=r"cu_seqlens is on meta, q on cpu"):
        package.mc_forward(**x, cu_seqlens=torch.tensor([0, 4, 10], device="meta"))
    with pytest.raises(ValueError, match=r"from 0 to T = 10"):
        package.mc_forward(**x, cu_seqlens=torch.tensor([1, 4, 10]))
    packed = package.mc_forward(**x, cu_seqlens=torch.tensor([0, 4, 10], dtype=torch.int32))
    assert packed.shape == (1, 10, 2, 8)


# -- MCLayer -------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [FULL, DEEP], ids=["matrix", "deep"])
def test_layer_misuse_says_what_it_expected(build_tiny, spec):
    package = build_tiny(**spec)
    layer = package.MCLayer(16)
    expected = r"MCLayer\(d_model=16\) takes x \[B, T, 16\]"
    with pytest.raises(ValueError, match=expected + r", got \[2, 5, 12\]"):
        layer(torch.randn(2, 5, 12))
    with pytest.raises(ValueError, match=expected + r", got \[5, 16\]"):
        layer(torch.randn(5, 16))
    with pytest.raises(TypeError, match=r"x has dtype torch.bfloat16, the layer's weights"):
        layer(torch.randn(2, 5, 16, dtype=torch.bfloat16))


def test_layer_needs_an_input(build_tiny):
    layer = build_tiny(**FULL).MCLayer(16, layer_idx=0)
    with pytest.raises(ValueError, match=r"needs x \[B, T, 16\] \(or hidden_states\)"):
        layer(use_cache=True)
    with pytest.raises(ValueError, match=r"attention_mask must be \[B, T\] = \[2, 5\].*got \[3, 5"):
        layer(hidden_states=torch.randn(2, 5, 16), attention_mask=torch.ones(3, 5))


# -- causality holds for non-finite inputs ---------------------------------------------------------

RECURRENCES = MATRIX_RECURRENCES
NAN_AT = 70  # inside the chunk of tokens 64..95 (chunks end at segment ends)


@pytest.mark.parametrize("aggregation", ["none", "residual", "grm", "ssc"])
@pytest.mark.parametrize("recurrence", RECURRENCES)
def test_a_nan_never_reaches_earlier_tokens(build_tiny, recurrence, aggregation):
    package = build_tiny(
        recurrence=recurrence,
        aggregation=aggregation,
        aggregation_extra=", top_k: 2" if aggregation == "ssc" else "",
        segments="{kind: constant, length: 32}",
        chunk_size=64,
    )
    x = _inputs(package, seq_len=100)
    clean = package.mc_forward(**x, backend="torch")
    for name in x:
        spoilt = {**x, name: x[name].clone()}
        spoilt[name][:, NAN_AT] = torch.nan
        out = package.mc_forward(**spoilt, backend="torch")
        torch.testing.assert_close(out[:, :NAN_AT], clean[:, :NAN_AT], msg=f"NaN in {name}")
        assert not out[:, NAN_AT].isfinite().all(), f"a NaN in {name} vanished"


@pytest.mark.parametrize("recurrence", ["titans", "dla"])
def test_a_nan_never_reaches_earlier_tokens_of_a_deep_memory(build_tiny, recurrence):
    package = build_tiny(recurrence=recurrence, deep="{minibatch: 8}", aggregation="grm")
    x = _inputs(package, seq_len=24)
    clean = package.mc_forward(**x)
    nan_at = 13  # inside the mini-batch of tokens 8..15
    for name in x:
        if name == "weights":
            continue
        spoilt = {**x, name: x[name].clone()}
        spoilt[name][:, nan_at] = torch.nan
        out = package.mc_forward(**spoilt)
        torch.testing.assert_close(out[:, :nan_at], clean[:, :nan_at], msg=f"NaN in {name}")
        assert not out[:, nan_at].isfinite().all(), f"a NaN in {name} vanished"


@pytest.mark.parametrize("recurrence", ["gated_delta", "titans"])
def test_causal_mix_takes_the_plain_matmul_only_for_finite_values(build_tiny, recurrence):
    """Finite values skip the masking; values whose sum overflows, or that hold a NaN or an
    Inf, take it, and finite rows still come out as the plain product."""
    deep = "{minibatch: 8}" if recurrence == "titans" else None
    package = build_tiny(recurrence=recurrence, **({"deep": deep} if deep else {}))
    causal_mix = importlib.import_module(f"{package.__name__}.backend_torch").causal_mix
    gen = torch.Generator().manual_seed(0)
    weights = torch.rand(2, 5, 5, generator=gen, dtype=torch.float64).tril()
    values = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)
    assert torch.equal(causal_mix(weights, values), weights @ values)
    # Finite, products too, but the sum of all 30 overflows: the masked path, same result.
    huge = 1e307 * (1 + values.abs() / 10)
    assert not huge.sum().isfinite() and huge.isfinite().all()
    assert (weights @ huge).isfinite().all()
    torch.testing.assert_close(causal_mix(weights, huge), weights @ huge)
    spoilt = values.clone()
    spoilt[0, 2, 1] = torch.inf
    mixed = causal_mix(weights, spoilt)
    torch.testing.assert_close(mixed[0, :2], (weights @ values)[0, :2])  # before the Inf
    assert mixed[0, 2:, 1].isnan().all() and mixed[0, 2:, 0].isfinite().all()
    torch.testing.assert_close(mixed[1], (weights @ values)[1])
