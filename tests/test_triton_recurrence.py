"""The generated Triton recurrence kernels (triton_recurrence.py) against an fp64 torch loop.

The kernels run under Triton's interpreter (conftest sets TRITON_INTERPRET). They read the
call's [B, T, H, D] tensors in place through a chunk table (first token, count); the
reference walks the same table token by token, and autograd gives its gradients.
"""

from __future__ import annotations

import importlib
import sys
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F


@pytest.fixture(scope="module")
def kernels(build_tiny):
    """(recurrence, chunk size) -> the generated triton_recurrence module of a tiny spec."""

    def get(recurrence: str, chunk: int = 8):
        pkg = build_tiny(recurrence=recurrence, aggregation="none", chunk_size=chunk)
        return importlib.import_module(pkg.__name__ + ".triton_recurrence")

    return get


class Table:
    """A chunk table as the glue makes it: (first token, count) per chunk, `resets` where the
    memory restarts, `state_slot` where a chunk's end memory is kept (-1: nowhere)."""

    def __init__(self, chunks, resets, state_slot):
        self.chunks, self.resets, self.state_slot = chunks, resets, state_slot
        self.num_slots = max(state_slot, default=-1) + 1
        self.seq_len = chunks[-1][0] + chunks[-1][1] if chunks else 0

    def tensors(self):
        as_int = lambda x: torch.tensor(x, dtype=torch.int32)  # noqa: E731
        chunks = as_int(self.chunks).view(-1, 2)
        return chunks, as_int(self.resets), as_int(self.state_slot)


def reference(q, k, v, g, h0, table, scale):
    """o [B, T, H, V], the memory before each chunk [BH, NC, V, K] and after each slotted
    chunk [BH, num_slots, V, K] of S_t = exp(g_t) S_{t-1} + v_t k_t^T (no exp(g_t) when g
    is None), o_t = scale S_t q_t, walked token by token."""
    batch, seq_len, heads, key_dim = q.shape
    zeros = q.new_zeros(batch, heads, v.shape[-1], key_dim)
    memory = zeros if h0 is None else h0.unflatten(0, (batch, heads))  # [B, H, V, K]
    outs, befores, slots = {}, [], [None] * table.num_slots
    for n, (first, count) in enumerate(table.chunks):
        if table.resets[n]:
            memory = zeros
        befores.append(memory)
        for t in range(first, first + count):
            if g is not None:
                memory = g[:, t, :, None, None].exp() * memory
            memory = memory + v[:, t, :, :, None] * k[:, t, :, None, :]
            outs[t] = scale * (memory @ q[:, t, :, :, None])[..., 0]  # [B, H, V]
        if table.state_slot[n] >= 0:
            slots[table.state_slot[n]] = memory
    o = torch.stack([outs[t] for t in range(seq_len)], dim=1)
    return o, torch.stack(befores, dim=2).flatten(0, 1), torch.stack(slots, dim=2).flatten(0, 1)


def rel(out, ref) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def make_inputs(
    recurrence, table, *, batch=2, heads=2, key_dim=6, value_dim=10, seed=0, g_shift=2.0
):
    """fp64 inputs (q unscaled: the kernels take scale = key_dim**-0.5); g = logsigmoid(x +
    g_shift), x standard normal (a very negative g_shift: strong decay)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    seq_len = table.seq_len
    q = randn(batch, seq_len, heads, key_dim)
    k = randn(batch, seq_len, heads, key_dim)
    v = randn(batch, seq_len, heads, value_dim)
    g = F.logsigmoid(randn(batch, seq_len, heads) + g_shift) if recurrence == "decay" else None
    h0 = randn(batch * heads, value_dim, key_dim)
    do = randn(batch, seq_len, heads, value_dim)
    dh_slots = randn(batch * heads, table.num_slots, value_dim, key_dim)
    return q, k, v, g, h0, do, dh_slots


@contextmanager
def poisoned(module):
    """Every float tensor that `module` allocates (new_empty) starts as NaN, so an element
    that no kernel writes shows up."""
    real = torch.Tensor.new_empty

    def new_empty(self, *size, **kwargs):
        out = real(self, *size, **kwargs)
        if sys._getframe(1).f_globals.get("__name__") == module.__name__:
            out.fill_(float("nan"))
        return out

    torch.Tensor.new_empty = new_empty
    try:
        yield
    finally:
        torch.Tensor.new_empty = real


def check(
    module,
    recurrence,
    table,
    *,
    dtype=torch.float32,
    use_h0=True,
    use_dh_slots=True,
    tol=1e-5,
    grad_tol=2e-5,
    **shape,
):
    q, k, v, g, h0, do, dh_slots = make_inputs(recurrence, table, **shape)
    scale = q.shape[-1] ** -0.5
    # The reference sees the inputs as the kernels do (rounded to `dtype`; gates in fp32).
    q, k, v = (x.to(dtype).double().requires_grad_() for x in (q, k, v))
    h0 = h0.float().double().requires_grad_() if use_h0 else None
    g = g.float().double().requires_grad_() if g is not None else None
    o_ref, before_ref, slots_ref = reference(q, k, v, g, h0, table, scale)
    loss = (o_ref * do).sum() + ((slots_ref * dh_slots).sum() if use_dh_slots else 0)
    leaves = {"q": q, "k": k, "v": v, "g": g, "h0": h0}
    leaves = {name: x for name, x in leaves.items() if x is not None}
    found = torch.autograd.grad(loss, list(leaves.values()), materialize_grads=True)
    grads = dict(zip(leaves, found, strict=True))

    inputs = [q.detach().to(dtype), k.detach().to(dtype), v.detach().to(dtype)]
    inputs += [g.detach().float()] if g is not None else []
    chunks, resets, state_slot = table.tensors()
    h0_32 = h0.detach().float() if use_h0 else None
    with poisoned(module):
        o, h_chunks, h_slots = module.recurrence_fwd(
            *inputs, h0_32, chunks, resets, state_slot, table.num_slots, scale
        )
    assert o.dtype == h_slots.dtype == torch.float32 and h_chunks.dtype == dtype
    assert not o.isnan().any() and not h_chunks.isnan().any() and not h_slots.isnan().any()
    assert rel(o, o_ref) <= tol, rel(o, o_ref)
    assert rel(h_chunks, before_ref) <= tol, rel(h_chunks, before_ref)
    assert rel(h_slots, slots_ref) <= tol, rel(h_slots, slots_ref)

    with poisoned(module):
        found = module.recurrence_bwd(
            *inputs,  # no h0: h_chunks holds the memory before every chunk
            chunks,
            resets,
            h_chunks,
            do.float(),
            dh_slots.float() if use_dh_slots else None,
            state_slot,
            scale,
        )
    names = ["q", "k", "v"] + (["g"] if g is not None else []) + ["h0"]
    assert len(found) == len(names)
    for name, grad in zip(names, found, strict=True):
        assert grad.dtype == torch.float32 and not grad.isnan().any(), name
        if name == "h0" and (not use_h0 or table.resets[0]):
            # dh0 comes back all the same: the gradient of the zero memory, zero after a reset
            if table.resets[0]:
                assert not grad.any(), "dh0 after a reset at chunk 0 must be zero"
            continue
        assert grad.shape == grads[name].shape, name
        assert rel(grad, grads[name]) <= grad_tol, (name, rel(grad, grads[name]))


FULL = [(0, 8), (8, 8), (16, 8), (24, 8)]
TABLES = {
    # continues from h0 throughout; slots out of chunk order, one chunk without
    "none": Table(FULL, [0, 0, 0, 0], [2, -1, 0, 1]),
    "every_other": Table(FULL, [1, 0, 1, 0], [-1, 0, 1, 2]),
    "h0_then_resets": Table(FULL, [0, 1, 0, 1], [-1, 0, 1, 2]),
    # chunks cut short (a segment end at token 13, a packed sequence of 2 tokens at the end)
    "short_chunks": Table([(0, 8), (8, 5), (13, 2)], [0, 0, 1], [-1, 0, 1]),
}


@pytest.mark.parametrize("recurrence", ["linear", "decay"])
@pytest.mark.parametrize("table", list(TABLES))
def test_matches_the_reference_fp32(kernels, recurrence, table):
    check(kernels(recurrence), recurrence, TABLES[table])


@pytest.mark.parametrize("recurrence", ["linear", "decay"])
def test_short_chunks_with_square_dims_and_one_head(kernels, recurrence):
    check(
        kernels(recurrence),
        recurrence,
        TABLES["short_chunks"],
        key_dim=8,
        value_dim=8,
        batch=1,
        heads=1,
    )


@pytest.mark.parametrize("recurrence", ["linear", "decay"])
def test_without_h0_and_injected_gradients_k_wider_than_v(kernels, recurrence):
    table = Table(FULL[:3], [1, 0, 0], [-1, -1, 0])
    check(
        kernels(recurrence),
        recurrence,
        table,
        key_dim=12,
        value_dim=3,
        use_h0=False,
        use_dh_slots=False,
    )


@pytest.mark.parametrize("recurrence", ["linear", "decay"])
def test_bf16_inputs(kernels, recurrence):
    table = Table(FULL[:3], [0, 1, 0], [-1, 0, 1])
    check(kernels(recurrence), recurrence, table, dtype=torch.bfloat16, tol=2e-2, grad_tol=4e-2)


@pytest.mark.parametrize("recurrence", ["linear", "decay"])
def test_fp16_inputs(kernels, recurrence):
    table = Table(FULL[:3], [0, 0, 1], [0, -1, 1])
    check(kernels(recurrence), recurrence, table, dtype=torch.float16, tol=5e-3, grad_tol=1e-2)


def test_blocks_tile_wide_k_and_v(kernels):
    # K and V wider than one block: several K and V blocks per program and per grid.
    module = kernels("decay")
    module.MAX_BLOCK_K, module.MAX_BLOCK_V = 16, 16
    try:
        table = Table(FULL[:2], [0, 1], [0, 1])
        check(module, "decay", table, key_dim=20, value_dim=33, batch=1)
    finally:
        module.MAX_BLOCK_K, module.MAX_BLOCK_V = 64, 64


def test_strong_decay_does_not_overflow(kernels):
    # g about -12 per token: exp(G_t - G_j) above the diagonal overflows fp32 and must be
    # masked out, not multiplied by zero.
    table = Table(FULL[:3], [0, 0, 1], [0, 1, 2])
    check(kernels("decay"), "decay", table, g_shift=-12.0, batch=1)


def test_tokens_outside_the_chunks_are_neither_read_nor_written(kernels):
    """A NaN in a token no chunk covers (here: tokens 5-7, as padding between packed pieces
    would be) reaches no result, and the outputs there stay as allocated."""
    module = kernels("linear")
    table = Table([(0, 5), (8, 8)], [1, 1], [0, 1])
    q, k, v, _, _, do, dh_slots = (
        None if x is None else x.float() for x in make_inputs("linear", table)
    )
    for x in (q, k, v, do):
        x[:, 5:8] = float("nan")
    chunks, resets, state_slot = table.tensors()
    o, h_chunks, h_slots = module.recurrence_fwd(q, k, v, None, chunks, resets, state_slot, 2, 0.5)
    assert not h_slots.isnan().any() and not o[:, :5].isnan().any() and not o[:, 8:].isnan().any()
    grads = module.recurrence_bwd(q, k, v, chunks, resets, h_chunks, do, dh_slots, state_slot, 0.5)
    for grad in grads[:3]:
        assert not grad[:, :5].isnan().any() and not grad[:, 8:].isnan().any()


def test_empty_call_launches_nothing(kernels):
    module = kernels("linear")
    q, v = torch.zeros(1, 0, 2, 6), torch.zeros(1, 0, 2, 10)
    chunks, empty = torch.zeros(0, 2, dtype=torch.int32), torch.zeros(0, dtype=torch.int32)
    o, h_chunks, h_slots = module.recurrence_fwd(q, q, v, None, chunks, empty, empty, 0, 1.0)
    assert o.shape == (1, 0, 2, 10) and h_chunks.shape == (2, 0, 10, 6) == h_slots.shape
    grads = module.recurrence_bwd(q, q, v, chunks, empty, h_chunks, o, None, empty, 1.0)
    assert [x.shape[1] for x in grads[:3]] == [0, 0, 0]
    assert grads[-1].shape == (2, 10, 6) and not grads[-1].any()


def test_dots_take_the_inputs_dtype_but_fp32_under_the_interpreter(kernels, monkeypatch):
    import triton.language as tl

    module = kernels("decay")
    assert module.INTERPRET  # conftest sets TRITON_INTERPRET
    assert module._dot_dtype(torch.bfloat16) == tl.float32
    monkeypatch.setattr(module, "INTERPRET", False)
    assert module._dot_dtype(torch.bfloat16) == tl.bfloat16
    assert module._dot_dtype(torch.float16) == tl.float16
    assert module._dot_dtype(torch.float32) == tl.float32


def test_other_input_dtypes_are_refused(kernels):
    module = kernels("linear")
    q = torch.zeros(1, 4, 1, 6, dtype=torch.float64)
    v = torch.zeros(1, 4, 1, 5, dtype=torch.float64)
    chunks = torch.tensor([[0, 4]], dtype=torch.int32)
    slots = torch.zeros(1, dtype=torch.int32)
    with pytest.raises(ValueError, match="float32, bfloat16 or float16, got torch.float64"):
        module.recurrence_fwd(q, q, v, None, chunks, slots, slots, 1, 1.0)
