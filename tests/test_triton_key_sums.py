"""The gate's key-sum kernels (templates/package/triton_key_sums.py.jinja).

Rendered through real grm specs (mean and sum pooling, a gate scale that is not the default)
and run under the Triton interpreter; the online logit, each run's key sum and every gradient
are compared with an fp64 transcription of their definition, differentiated by autograd.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

GATE_SCALE = 0.75
POOLS = ("mean", "sum")


@pytest.fixture(scope="module")
def kernels(build_tiny):
    """pool -> the rendered triton_key_sums module of a grm spec pooling that way."""
    modules = {}
    for pool in POOLS:
        pkg = build_tiny(aggregation_extra=f", pool: {pool}, gate_scale: {GATE_SCALE}")
        modules[pool] = importlib.import_module(pkg.__name__ + ".triton_key_sums")
    return modules


def reference(k, conn, seen, runs, prefix_sum, carried, pool):
    """(logit_on [B, T, H], run_sums [B, H, S, K]) in fp64, token by token."""
    batch, seq_len, heads, key_dim = k.shape
    logit = torch.zeros(batch, seq_len, heads, dtype=torch.float64)
    sums = []
    for lo, hi in runs.tolist():
        total = prefix_sum.double() if lo < carried else torch.zeros(batch, heads, key_dim).double()
        for t in range(lo, hi):
            total = total + k[:, t].double()
            factor = GATE_SCALE / seen[t].item() if pool == "mean" else GATE_SCALE
            logit[:, t] = (conn[:, t].double() * total).sum(-1) * factor
        sums.append(total)
    return logit, torch.stack(sums, dim=2)


def make_case(seed, runs, seq_len, carried, dtype=torch.float32, batch=2, heads=3, key_dim=12):
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(batch, seq_len, heads, key_dim, generator=gen).to(dtype)
    conn = torch.randn(batch, seq_len, heads, key_dim, generator=gen).to(dtype)
    seen = torch.zeros(seq_len)
    for lo, hi in runs:
        before = 5.0 if lo < carried else 0.0  # a carried segment had tokens before the call
        seen[lo:hi] = before + torch.arange(1, hi - lo + 1, dtype=torch.float32)
    prefix_sum = torch.randn(batch, heads, key_dim, generator=gen)
    return k, conn, seen, torch.tensor(runs, dtype=torch.int32), prefix_sum


# (runs, tokens, carried): runs longer than a block (32 in the interpreter), one token long,
# a carried first run, none carried.
CASES = {
    "carried": ([(0, 37), (37, 45), (45, 46), (46, 90)], 90, 37),
    "fresh": ([(0, 8), (8, 80)], 80, 0),
    "one_run": ([(0, 70)], 70, 70),
}


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_matches_fp64(kernels, pool, case):
    runs, seq_len, carried = CASES[case]
    k, conn, seen, runs_t, prefix_sum = make_case(1, runs, seq_len, carried)
    logit, run_sums = kernels[pool].key_sums_fwd(k, conn, seen, runs_t, prefix_sum, carried)
    want_logit, want_sums = reference(k, conn, seen, runs_t, prefix_sum, carried, pool)
    torch.testing.assert_close(logit.double(), want_logit, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(run_sums.double(), want_sums, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("reads_logit", [True, False])
def test_backward_matches_autograd(kernels, pool, case, reads_logit):
    runs, seq_len, carried = CASES[case]
    k, conn, seen, runs_t, prefix_sum = make_case(2, runs, seq_len, carried)
    gen = torch.Generator().manual_seed(3)
    d_logit = torch.randn(k.shape[:3], generator=gen) if reads_logit else None
    d_sums = torch.randn(k.shape[0], k.shape[2], len(runs), k.shape[3], generator=gen)
    # What the kernel accumulates onto: the gradients from elsewhere in the backward.
    dk_before = torch.randn(k.shape, generator=gen)
    d_conn_before = torch.randn(k.shape, generator=gen)

    leaves = [x.double().requires_grad_() for x in (k, conn, prefix_sum)]
    logit, sums = reference(leaves[0], leaves[1], seen, runs_t, leaves[2], carried, pool)
    loss = (sums * d_sums.double()).sum()
    if reads_logit:
        loss = loss + (logit * d_logit.double()).sum()
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)  # no carried run: no prefix
    want_dk, want_dconn, want_dprefix = (
        torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads, strict=True)
    )

    dk, d_conn = dk_before.clone(), d_conn_before.clone()
    d_prefix = kernels[pool].key_sums_bwd(
        k, conn, seen, runs_t, prefix_sum, carried, d_logit, d_sums, dk, d_conn
    )
    torch.testing.assert_close(dk.double(), dk_before.double() + want_dk, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        d_conn.double(), d_conn_before.double() + want_dconn, rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(d_prefix.double(), want_dprefix, rtol=1e-5, atol=1e-5)
    if not reads_logit:  # the connector had no effect: its gradient is left as it was
        assert torch.equal(d_conn, d_conn_before)


def test_a_nan_stays_in_its_segment(kernels):
    """A NaN key poisons its own segment's later tokens, never another segment's."""
    runs, seq_len, carried = CASES["fresh"]
    k, conn, seen, runs_t, prefix_sum = make_case(4, runs, seq_len, carried)
    k[:, 20] = math.nan  # inside the second run, (8, 80)
    logit, run_sums = kernels["mean"].key_sums_fwd(k, conn, seen, runs_t, prefix_sum, carried)
    assert torch.isfinite(logit[:, :20]).all()  # the first run, and the second before the NaN
    assert torch.isnan(logit[:, 20:]).all()
    assert torch.isfinite(run_sums[:, :, 0]).all() and torch.isnan(run_sums[:, :, 1]).all()


def test_sixteen_bit_inputs_sum_in_fp32(kernels):
    runs, seq_len, carried = CASES["carried"]
    k, conn, seen, runs_t, prefix_sum = make_case(5, runs, seq_len, carried, dtype=torch.bfloat16)
    logit, run_sums = kernels["mean"].key_sums_fwd(k, conn, seen, runs_t, prefix_sum, carried)
    assert logit.dtype == run_sums.dtype == torch.float32
    want_logit, want_sums = reference(k, conn, seen, runs_t, prefix_sum, carried, "mean")
    torch.testing.assert_close(logit.double(), want_logit, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(run_sums.double(), want_sums, rtol=1e-5, atol=1e-5)
