"""swla, the paper's sliding-window linear attention (its Eq. 28), against independent
transcriptions: each segment its own RNN under init independent, decay when the previous
token's strength is zero, the previous key and value carried through the decode cache, and
its cost. The tests every matrix recurrence takes (test_semantics, test_layer_interfaces,
test_misuse) cover the rest through the registry."""

from __future__ import annotations

import importlib
import itertools

import pytest
import torch
from spec_helpers import spec_text

from mcgen.components.registry import RECURRENCES
from mcgen.passes.pipeline import compile_spec
from mcgen.spec import parse_spec

SCALE = 8**-0.5
SEGMENT = 8


def _inputs(package, *, batch=2, seq_len=29, heads=2, seed=0):
    selftest = importlib.import_module(f"{package.__name__}.selftest")
    return selftest.make_inputs(batch, seq_len, heads, 8, 8, dtype=torch.float64, seed=seed)


def _rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _eq28(q, k, v, g, beta, beta_prev):
    """y_t = M_t q_t, M_t = a_t M_{t-1} + b_t v_{t-1} k_{t-1}^T + c_t v_t k_t^T (a = exp g,
    b = beta_prev, c = beta), no previous token before the first, one (b, h) at a time."""
    batch, seq_len, heads, key_dim = q.shape
    out = torch.zeros(batch, seq_len, heads, v.shape[-1], dtype=torch.float64)
    for b, h in itertools.product(range(batch), range(heads)):
        memory = torch.zeros(v.shape[-1], key_dim, dtype=torch.float64)
        for t in range(seq_len):
            memory = torch.exp(g[b, t, h]) * memory + beta[b, t, h] * torch.outer(
                v[b, t, h], k[b, t, h]
            )
            if t > 0:
                memory = memory + beta_prev[b, t, h] * torch.outer(v[b, t - 1, h], k[b, t - 1, h])
            out[b, t, h] = memory @ (SCALE * q[b, t, h])
    return out


def test_independent_segments_are_each_their_own_rnn(build_tiny):
    """init independent, no aggregation: the output of each segment is Eq. 28 run on its
    tokens alone (the previous token of a segment's first is another segment's)."""
    package = build_tiny(
        recurrence="swla",
        segments=f"{{kind: constant, length: {SEGMENT}}}",
        init="independent",
        aggregation="none",
    )
    x = _inputs(package)
    pieces = []
    for start in range(0, 29, SEGMENT):
        own = {n: t[:, start : start + SEGMENT] for n, t in x.items()}
        pieces.append(_eq28(*(own[n] for n in ("q", "k", "v", "g", "beta", "beta_prev"))))
    expected = torch.cat(pieces, dim=1)
    assert _rel(package.reference(**x), expected) < 1e-12
    assert _rel(package.mc_forward(**x), expected) < 1e-12


def test_checkpoint_crosses_segment_ends(build_tiny):
    """Under checkpoint the memory and its previous-token term run on across segment ends:
    with no aggregation it is the plain Eq. 28 RNN over the whole sequence."""
    package = build_tiny(recurrence="swla", aggregation="none")
    x = _inputs(package)
    expected = _eq28(*(x[n] for n in ("q", "k", "v", "g", "beta", "beta_prev")))
    assert _rel(package.reference(**x), expected) < 1e-12
    assert _rel(package.mc_forward(**x), expected) < 1e-12


@pytest.mark.parametrize("init", ["checkpoint", "independent"])
def test_no_previous_strength_is_decay_with_scaled_values(build_tiny, init):
    """beta_prev = 0 leaves S <- exp(g) S + beta v k^T: decay over the values beta * v, with
    caching, the gate and its descriptors alike."""
    swla = build_tiny(recurrence="swla", init=init, segments="{kind: logarithmic, length: 4}")
    decay = build_tiny(recurrence="decay", init=init, segments="{kind: logarithmic, length: 4}")
    x = _inputs(swla)
    beta, beta_prev = x.pop("beta"), x.pop("beta_prev")
    expected = decay.reference(**{**x, "v": x["v"] * beta[..., None]})
    zero = torch.zeros_like(beta_prev)
    assert _rel(swla.reference(**x, beta=beta, beta_prev=zero), expected) < 1e-12
    assert _rel(swla.mc_forward(**x, beta=beta, beta_prev=zero), expected) < 1e-12
    # ... and the previous token's term is not vacuous.
    assert _rel(swla.mc_forward(**x, beta=beta, beta_prev=beta_prev), expected) > 1e-3


def test_the_decode_cache_carries_the_last_key_and_value(build_tiny):
    package = build_tiny(recurrence="swla")
    x = _inputs(package, batch=1, seq_len=13)
    _, cache = package.mc_forward(**x, output_cache=True)
    assert torch.equal(cache.last_key, x["k"][:, -1])
    assert torch.equal(cache.last_value, x["v"][:, -1])
    # What a decoder holds: the memory, the cached ones and their descriptors, the running
    # key sum, and the last key and value.
    assert package.MCLayer().state_size(13) == cache.numel()
    split = cache.split()
    assert len(split) == 1 and torch.equal(split[0].last_key, cache.last_key)
    # The next token reads them: dropping them changes its output.
    step = {f"{n}_t": t[:, -1] for n, t in x.items()}
    o_t, _ = package.mc_step(**step, cache=cache)
    forgotten = type(cache)(**{**vars(cache), "last_key": torch.zeros_like(cache.last_key)})
    o_forgot, _ = package.mc_step(**step, cache=forgotten)
    assert _rel(o_forgot, o_t) > 1e-3


def test_packed_sequences_start_without_a_previous_token(build_tiny):
    package = build_tiny(recurrence="swla", aggregation="none", segments="{kind: none}")
    x = _inputs(package, batch=1, seq_len=20)
    packed = package.mc_forward(**x, cu_seqlens=[0, 7, 20])
    first = package.mc_forward(**{n: t[:, :7] for n, t in x.items()})
    second = package.mc_forward(**{n: t[:, 7:] for n, t in x.items()})
    assert _rel(packed, torch.cat([first, second], dim=1)) < 1e-12


def test_the_layer_trains_its_previous_strength(build_tiny):
    package = build_tiny(recurrence="swla")
    torch.manual_seed(0)
    layer = package.MCLayer(16)
    layer(torch.randn(2, 11, 16)).square().mean().backward()
    assert layer.beta_prev_proj.weight.grad.abs().sum() > 0


def test_cost_counts_the_second_write_and_the_carried_token():
    def compiled(recurrence):
        return compile_spec(parse_spec(spec_text(recurrence=recurrence)), 64).after

    swla, decay = compiled("swla"), compiled("decay")
    assert swla.nodes["scan"]["cost"]["flops"] > decay.nodes["scan"]["cost"]["flops"]
    key_dim, value_dim = 8, 8
    extra = swla.graph["cost"]["decode_state_bytes"] - decay.graph["cost"]["decode_state_bytes"]
    assert extra == 2 * 4 * (key_dim + value_dim)  # per head (2 heads), fp32
    assert RECURRENCES.get("swla").triton_template is None  # torch backend only
