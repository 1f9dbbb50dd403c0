"""The generated Triton recurrence kernels (triton_recurrence.py) against an fp64 torch loop.

The kernels run under Triton's interpreter (conftest sets TRITON_INTERPRET). The reference
takes the same chunked tensors, walks them token by token, and autograd gives its gradients.
"""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
import torch.nn.functional as F


@pytest.fixture(scope="module")
def kernels(build_tiny):
    """recurrence -> the generated triton_recurrence module of a tiny spec."""

    def get(recurrence: str):
        pkg = build_tiny(recurrence=recurrence, aggregation="none")
        return importlib.import_module(pkg.__name__ + ".triton_recurrence")

    return get


def reference(q, k, v, g, h0, resets, scale):
    """o [BH, NC, C, V] and h_out [BH, NC, V, K] of S_t = exp(g_t) S_{t-1} + v_t k_t^T
    (no exp(g_t) when g is None), o_t = scale S_t q_t, walked token by token."""
    bh, nc, c, _ = q.shape
    memory = h0
    outs, ends = [], []
    for n in range(nc):
        if resets[n]:
            memory = torch.zeros_like(memory)
        for t in range(c):
            if g is not None:
                memory = g[:, n, t, None, None].exp() * memory
            memory = memory + v[:, n, t, :, None] * k[:, n, t, None, :]
            outs.append(scale * (memory @ q[:, n, t, :, None]))
        ends.append(memory)
    o = torch.cat(outs, dim=-1).transpose(-1, -2).unflatten(1, (nc, c))
    return o, torch.stack(ends, dim=1)


def rel(out, ref) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def make_inputs(
    recurrence, *, bh=2, nc=4, c=4, key_dim=6, value_dim=10, pad=(), seed=0, g_shift=2.0
):
    """Chunked inputs in fp64 (q unscaled: the kernels take scale = key_dim**-0.5); `pad`
    lists (chunk, first padding slot): zeros from there on; g = logsigmoid(x + g_shift), x
    standard normal (a very negative g_shift: strong decay)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(bh, nc, c, key_dim, generator=gen, dtype=torch.float64)
    k = torch.randn(bh, nc, c, key_dim, generator=gen, dtype=torch.float64)
    v = torch.randn(bh, nc, c, value_dim, generator=gen, dtype=torch.float64)
    g = None
    if recurrence == "decay":
        g = F.logsigmoid(torch.randn(bh, nc, c, generator=gen, dtype=torch.float64) + g_shift)
    for n, slot in pad:
        for x in (q, k, v) + ((g,) if g is not None else ()):
            x[:, n, slot:] = 0
    h0 = torch.randn(bh, value_dim, key_dim, generator=gen, dtype=torch.float64)
    do = torch.randn(bh, nc, c, value_dim, generator=gen, dtype=torch.float64)
    dh_out = torch.randn(bh, nc, value_dim, key_dim, generator=gen, dtype=torch.float64)
    return q, k, v, g, h0, do, dh_out


def poisoned(module, name):
    """Run module.<name> with every tensor that the launcher allocates (new_empty) filled
    with NaN first, so a slot that no kernel writes shows up."""
    real = torch.Tensor.new_empty

    def new_nan(self, *size, **kwargs):
        out = real(self, *size, **kwargs)
        if sys._getframe(1).f_globals.get("__name__") == module.__name__:
            out.fill_(float("nan"))
        return out

    def call(*args):
        torch.Tensor.new_empty = new_nan
        try:
            return getattr(module, name)(*args)
        finally:
            torch.Tensor.new_empty = real

    return call


def check(
    kernels,
    recurrence,
    resets,
    *,
    dtype=torch.float32,
    use_dh_out=True,
    tol=1e-5,
    grad_tol=2e-5,
    **shape,
):
    module = kernels(recurrence)
    q, k, v, g, h0, do, dh_out = make_inputs(recurrence, nc=len(resets), **shape)
    resets_t = torch.tensor(resets, dtype=torch.int32)
    # The reference sees the inputs as the kernels do (rounded to `dtype`).
    q, k, v = (x.to(dtype).double().requires_grad_() for x in (q, k, v))
    h0 = h0.float().double().requires_grad_()
    if g is not None:
        g = g.float().double().requires_grad_()
    scale = shape.get("key_dim", 6) ** -0.5
    o_ref, h_ref = reference(q, k, v, g, h0, resets, scale)
    # Gradients injected at every chunk but the first (as at segment ends), stored compactly:
    # chunk n's at slot n - 1 of dh_out[:, 1:], chunk 0's slot -1.
    injected = torch.arange(len(resets)) > 0
    dh_slot = (torch.cumsum(injected.int(), 0) - 1).where(injected, -1).to(torch.int32)
    dh_out = dh_out * injected[None, :, None, None]
    loss = (o_ref * do).sum() + ((h_ref * dh_out).sum() if use_dh_out else 0)
    names = ["q", "k", "v", "h0"] + (["g"] if g is not None else [])
    leaves = [q, k, v, h0] + ([g] if g is not None else [])
    found = torch.autograd.grad(loss, leaves, materialize_grads=True)
    grads = dict(zip(names, found, strict=True))

    args = (q.detach().to(dtype), k.detach().to(dtype), v.detach().to(dtype))
    g32 = g.detach().float() if g is not None else None
    h0_32 = h0.detach().float()
    o, h_out = poisoned(module, "recurrence_fwd")(*args, g32, h0_32, resets_t, scale)
    assert o.dtype == h_out.dtype == torch.float32
    assert not o.isnan().any() and not h_out.isnan().any()
    assert rel(o, o_ref) <= tol, rel(o, o_ref)
    assert rel(h_out, h_ref) <= tol, rel(h_out, h_ref)

    dq, dk, dv, dg, dh0 = poisoned(module, "recurrence_bwd")(
        *args,
        g32,
        h0_32,
        resets_t,
        h_out,
        do.float(),
        dh_out[:, 1:].float() if use_dh_out else None,
        dh_slot if use_dh_out else None,
        scale,
    )
    got = {"q": dq, "k": dk, "v": dv, "h0": dh0, "g": dg}
    if g is None:
        assert dg is None
        del got["g"]
    for name, grad in got.items():
        assert grad.dtype == torch.float32 and grad.shape == grads[name].shape, name
        assert not grad.isnan().any(), name
        if name == "h0" and resets[0]:
            assert (grad == 0).all()
        else:
            assert rel(grad, grads[name]) <= grad_tol, (name, rel(grad, grads[name]))


RESETS = {
    "none": [0, 0, 0, 0],  # continues from h0 throughout
    "every_other": [1, 0, 1, 0],
    "h0_then_resets": [0, 1, 0, 1],
}


@pytest.mark.parametrize("recurrence", ["linear", "decay"])
@pytest.mark.parametrize("resets", list(RESETS))
def test_matches_the_reference_fp32(kernels, recurrence, resets):
    check(kernels, recurrence, RESETS[resets])


@pytest.mark.parametrize("recurrence", ["linear", "decay"])
def test_chunk_of_eight_with_padding_and_square_dims(kernels, recurrence):
    # Chunk 1 is padded from slot 5, chunk 2 from slot 2 (zeros, g = 0 there).
    check(kernels, recurrence, [0, 0, 1], c=8, key_dim=8, value_dim=8, pad=[(1, 5), (2, 2)], bh=1)


@pytest.mark.parametrize("recurrence", ["linear", "decay"])
def test_without_dh_out_and_k_wider_than_v(kernels, recurrence):
    check(kernels, recurrence, [1, 0, 0], key_dim=12, value_dim=3, use_dh_out=False)


@pytest.mark.parametrize("recurrence", ["linear", "decay"])
def test_bf16_inputs(kernels, recurrence):
    check(kernels, recurrence, [0, 1, 0], dtype=torch.bfloat16, tol=2e-2, grad_tol=4e-2)


def test_blocks_tile_wide_k_and_v(kernels):
    # K and V wider than one block: several K and V blocks per program and per grid.
    module = kernels("decay")
    module.MAX_BLOCK_K, module.MAX_BLOCK_V = 16, 16
    try:
        check(kernels, "decay", [0, 1], key_dim=20, value_dim=33, bh=1)
    finally:
        module.MAX_BLOCK_K, module.MAX_BLOCK_V = 64, 64


def test_strong_decay_does_not_overflow(kernels):
    # g about -12 per slot: exp(G_t - G_j) above the diagonal overflows fp32 and must be
    # masked out, not multiplied by zero.
    check(kernels, "decay", [0, 0, 1], c=8, g_shift=-12.0, bh=1)


def test_without_h0_the_memory_starts_from_zero(kernels):
    module = kernels("decay")
    q, k, v, g, h0, do, dh_out = (
        x.float() for x in make_inputs("decay", nc=2, bh=1, key_dim=5, value_dim=7)
    )
    resets = torch.zeros(2, dtype=torch.int32)
    zero = torch.zeros_like(h0)
    o, h_out = module.recurrence_fwd(q, k, v, g, None, resets, 0.5)
    o_zero, h_zero = module.recurrence_fwd(q, k, v, g, zero, resets, 0.5)
    assert torch.equal(o, o_zero) and torch.equal(h_out, h_zero)
    slots = torch.arange(2, dtype=torch.int32)
    grads = module.recurrence_bwd(q, k, v, g, None, resets, h_out, do, dh_out, slots, 0.5)
    grads_zero = module.recurrence_bwd(q, k, v, g, zero, resets, h_out, do, dh_out, slots, 0.5)
    assert grads[3] is not None
    for a, b in zip(grads, grads_zero, strict=True):
        assert torch.equal(a, b)


def test_empty_call_launches_nothing(kernels):
    module = kernels("linear")
    q = torch.zeros(2, 0, 4, 6)
    empty = torch.zeros(0, dtype=torch.int32)
    o, h_out = module.recurrence_fwd(q, q, torch.zeros(2, 0, 4, 10), None, None, empty, 1.0)
    assert o.shape == (2, 0, 4, 10) and h_out.shape == (2, 0, 10, 6)


@pytest.mark.parametrize("recurrence", ["linear", "decay"])
def test_fp16_inputs(kernels, recurrence):
    check(kernels, recurrence, [0, 0, 1], dtype=torch.float16, tol=5e-3, grad_tol=1e-2)


def test_dots_take_the_inputs_dtype_but_fp32_under_the_interpreter(kernels, monkeypatch):
    import triton.language as tl

    module = kernels("decay")
    assert module.INTERPRETED  # conftest sets TRITON_INTERPRET
    assert module._dot_dtype(torch.bfloat16) == tl.float32
    monkeypatch.setattr(module, "INTERPRETED", False)
    assert module._dot_dtype(torch.bfloat16) == tl.bfloat16
    assert module._dot_dtype(torch.float16) == tl.float16
    assert module._dot_dtype(torch.float32) == tl.float32


def test_other_input_dtypes_are_refused(kernels):
    module = kernels("linear")
    q = torch.zeros(1, 1, 4, 6, dtype=torch.float64)
    v = torch.zeros(1, 1, 4, 5, dtype=torch.float64)
    resets = torch.zeros(1, dtype=torch.int32)
    with pytest.raises(ValueError, match="float32, bfloat16 or float16, got torch.float64"):
        module.recurrence_fwd(q, q, v, None, None, resets, 1.0)
