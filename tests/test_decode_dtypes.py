"""Half-precision decode: outputs come back in the input dtype from every path (issue 12,
item 2), and a bf16 or fp16 MCLayer decodes through its HF-style cache as its fp32 twin."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch

AGGREGATIONS = {"none": "", "residual": "", "grm": "", "soup": "", "ssc": ", top_k: 2"}
HALF_DTYPES = [torch.bfloat16, torch.float16]
# Segments of 4 tokens: 15 tokens cache 3 memories, more than ssc's top_k of 2.
SEGMENTS = "{kind: constant, length: 4}"
PREFILL, DECODED = 9, 6


def _package(build_tiny, recurrence: str, aggregation: str):
    return build_tiny(
        recurrence=recurrence,
        segments=SEGMENTS,
        aggregation=aggregation,
        aggregation_extra=AGGREGATIONS[aggregation],
    )


def _decode_through_layer(layer, x: torch.Tensor) -> torch.Tensor:
    """Prefill PREFILL tokens, then decode the rest one at a time (HF-style cache)."""
    out, _, cache = layer(hidden_states=x[:, :PREFILL], use_cache=True)
    outs = [out]
    for t in range(PREFILL, x.shape[1]):
        out, _, cache = layer(hidden_states=x[:, t : t + 1], past_key_values=cache, use_cache=True)
        outs.append(out)
    return torch.cat(outs, dim=1)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("aggregation", list(AGGREGATIONS))
@pytest.mark.parametrize("recurrence", ["linear", "gated_delta"])
def test_half_precision_layer_decodes_like_fp32(build_tiny, recurrence, aggregation, dtype):
    package = _package(build_tiny, recurrence, aggregation)
    torch.manual_seed(0)
    layer = package.MCLayer(16, layer_idx=0)
    x = torch.randn(2, PREFILL + DECODED, 16)
    with torch.no_grad():
        expected = _decode_through_layer(layer, x)
        got = _decode_through_layer(copy.deepcopy(layer).to(dtype), x.to(dtype))
    assert got.dtype == dtype
    assert torch.isfinite(got).all()
    assert _rel(got, expected) < 3e-2


@pytest.mark.parametrize("dtype", [*HALF_DTYPES, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("aggregation", list(AGGREGATIONS))
def test_ops_return_the_input_dtype(build_tiny, aggregation, dtype):
    package = _package(build_tiny, "gated_delta", aggregation)
    selftest = importlib.import_module(f"{package.__name__}.selftest")
    x = selftest.make_inputs(1, PREFILL + 1, 2, 8, 8, dtype=dtype)
    out, cache = package.mc_forward(**{n: t[:, :PREFILL] for n, t in x.items()}, output_cache=True)
    assert out.dtype == dtype
    o_t, _ = package.mc_step(**{f"{n}_t": t[:, PREFILL] for n, t in x.items()}, cache=cache)
    assert o_t.dtype == dtype
    o_t, _ = package.mc_step(**{f"{n}_t": t[:, 0] for n, t in x.items()})  # a fresh stream
    assert o_t.dtype == dtype


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("aggregation", ["none", "residual", "grm", "soup", "ssc"])
def test_deep_memory_ops_return_the_input_dtype(build_tiny, aggregation, dtype):
    package = build_tiny(
        recurrence="titans",
        deep="{minibatch: 2}",
        segments=SEGMENTS,
        aggregation=aggregation,
        aggregation_extra=AGGREGATIONS[aggregation],
    )
    selftest = importlib.import_module(f"{package.__name__}.selftest")
    x = selftest.make_inputs(1, PREFILL + 1, 2, 8, 8, dtype=dtype)
    weights = x.pop("weights")
    prefill = {n: t[:, :PREFILL] for n, t in x.items()}
    out, cache = package.mc_forward(**prefill, weights=weights, output_cache=True)
    assert out.dtype == dtype
    o_t, _ = package.mc_step(**{f"{n}_t": t[:, PREFILL] for n, t in x.items()}, cache=cache)
    assert o_t.dtype == dtype
    reference = package.mc_forward(**{n: t.double() for n, t in x.items()}, weights=weights)
    assert _rel(o_t, reference[:, PREFILL]) < 3e-2
