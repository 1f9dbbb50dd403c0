"""Triton kernels of the cached reads in state form (templates/package/triton_read_state.py.jinja).

Each aggregation's template is rendered through a real spec (`build_tiny`) and run under the
Triton interpreter; outputs and every gradient are compared with an fp64 torch transcription
of the kernels' contract (dense masks, autograd). The reference works on chunked inputs
[BH, NC, C, ...]; the kernels get the same tokens in place, [B, T, H, ...] with a chunk table
(first token, count), chunks shorter than C keeping their first slots only. ssc reads in
state form through triton_read_sparse (tests/test_triton_read_sparse.py, which shares this
file's reference).
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

# kind -> (spec fields of build_tiny). gate_scale differs from the default K^-1/2, so the test
# sees that the value baked into the kernels is the spec's.
SPECS = {
    "residual": {"aggregation": "residual"},
    "grm": {"aggregation": "grm", "aggregation_extra": ", gate_scale: 0.75"},
    "soup": {"aggregation": "soup", "aggregation_extra": ", gate_scale: 0.75"},
}

# Windows of 6 chunks over 8 memories, like two packed sequences: chunk 0 sees nothing
# (lo == hi == 0), chunks 1-2 see 1 and 3 of the first sequence's memories 0..2, chunk 3 starts
# the second sequence (lo == hi == 3), chunks 4-5 see 1 and 5 of its memories 3..7 (lo > 0):
# fewer, as many and more visible memories than top_k = 1, 2, 3.
WINDOWS = ([0, 0, 0, 3, 3, 3], [0, 1, 3, 3, 4, 8])


@pytest.fixture(scope="module")
def kernels(build_tiny):
    """kind -> the rendered triton_read_state module of that spec."""
    cache: dict[str, object] = {}

    def get(kind: str):
        if kind not in cache:
            pkg = build_tiny(**SPECS[kind])
            cache[kind] = importlib.import_module(pkg.__name__ + ".triton_read_state")
        return cache[kind]

    return get


@pytest.fixture(autouse=True)
def poison(monkeypatch, kernels):
    """Every output and scratch buffer starts as NaN (ints as a huge index) before launch."""

    def poisoned(shape, device, dtype=torch.float32):
        fill = math.nan if dtype.is_floating_point else 2**30
        return torch.full(shape, fill, dtype=dtype, device=device)

    for kind in SPECS:
        monkeypatch.setattr(kernels(kind), "_alloc", poisoned)


def aggregation_of(module) -> str:
    if not hasattr(module, "GATE_SCALE"):
        return "residual"
    return "ssc" if hasattr(module, "TOP_K") else "grm"


def reference(module, q, o_on, logit_on, conn, descriptors, states, lo, hi):
    """The contract in fp64: (o, lse) with dense visibility masks; q is read at SCALE."""
    kind = aggregation_of(module)
    q = q * SCALE
    num_memories = states.shape[1]
    ids = torch.arange(num_memories)
    visible = (ids >= lo[:, None]) & (ids < hi[:, None])  # [NC, N]
    reads = torch.einsum("bnck,bivk->bnciv", q, states)  # [BH, NC, C, N, V]
    if kind == "residual":
        return o_on + torch.einsum("ni,bnciv->bncv", visible.to(q.dtype), reads), None
    logits = module.GATE_SCALE * torch.einsum("bnck,bik->bnci", conn, descriptors)
    logits = logits.masked_fill(~visible[None, :, None, :], -torch.inf)  # [BH, NC, C, N]
    if kind == "ssc" and num_memories > module.TOP_K:
        # the TOP_K largest, ties to the older memory (what the kernels do); no gradient
        order = torch.sort(logits.detach(), dim=-1, descending=True, stable=True).indices
        keep = torch.zeros_like(logits, dtype=torch.bool)
        keep.scatter_(-1, order[..., : module.TOP_K], True)
        logits = logits.masked_fill(~keep, -torch.inf)
    every = torch.cat([logit_on[..., None], logits], dim=-1)
    weights = torch.softmax(every, dim=-1)
    o = weights[..., :1] * o_on + torch.einsum("bnci,bnciv->bncv", weights[..., 1:], reads)
    return o, torch.logsumexp(every, dim=-1)


def rel_err(out, ref) -> float:
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all(), "NaN/Inf (an element the kernel never wrote?)"
    ref = ref.double()
    scale = ref.norm().item()
    err = (out.double() - ref).norm().item()
    return err / scale if scale > 0 else err


def make_inputs(
    *,
    bh=2,
    chunk=4,
    key_dim=6,
    value_dim=10,
    windows=WINDOWS,
    num_memories=None,
    dtype=torch.float32,
    seed=0,
):
    lo, hi = (torch.tensor(w, dtype=torch.int32) for w in windows)
    nc = len(lo)
    n = int(hi.max()) if num_memories is None else num_memories
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, std=1.0):
        return torch.randn(*shape, generator=gen) * std

    return {
        "q": rand(bh, nc, chunk, key_dim, std=0.5).to(dtype),
        "o_on": rand(bh, nc, chunk, value_dim),
        "logit_on": rand(bh, nc, chunk),
        "conn": rand(bh, nc, chunk, key_dim).to(dtype),
        "descriptors": rand(bh, n, key_dim),
        "states": rand(bh, n, value_dim, key_dim),
        "visible_lo": lo,
        "visible_hi": hi,
    }


NAMES = ("q", "o_on", "logit_on", "conn", "descriptors", "states")
SCALE = 0.75  # not 1: the kernels apply the read scale themselves


PER_TOKEN = ("q", "o_on", "logit_on", "conn")


def token_layout(valid, batch: int):
    """[BH, NC, C, ...] -> [B, T, H, ...]: the slots where valid [NC, C], in order."""

    def convert(x):
        x = x[:, valid]  # [BH, T, ...]
        return x.unflatten(0, (batch, -1)).transpose(1, 2).contiguous()

    return convert


def check(module, inputs, *, counts=None, batch=1, tol=1e-5, grad_tol=2e-5, seed=1):
    """Run fwd + bwd of `module` on `inputs` laid out as tokens (chunk n keeping its first
    counts[n] slots; BH = batch * heads), compare o, lse and every gradient with fp64."""
    kind = aggregation_of(module)
    num_chunks, chunk = inputs["q"].shape[1:3]
    counts = [chunk] * num_chunks if counts is None else counts
    valid = torch.tensor([[s < n for s in range(chunk)] for n in counts], dtype=torch.bool)
    tokens = token_layout(valid.view(num_chunks, chunk), batch)
    firsts = [sum(counts[:n]) for n in range(num_chunks)]
    table = list(zip(firsts, counts, strict=True))
    lo, hi = inputs["visible_lo"], inputs["visible_hi"]
    args = {name: tokens(x) if name in PER_TOKEN else x for name, x in inputs.items()}
    del args["visible_lo"], args["visible_hi"]
    if kind == "residual":  # no gate: the kernels take none of its inputs
        del args["logit_on"], args["conn"], args["descriptors"]
    kernel_args = [*args.values(), table, lo.tolist(), hi.tolist()]
    o, lse = module.read_state_fwd(*kernel_args, scale=SCALE)
    leaves = {
        name: (inputs[name].double().requires_grad_() if name in args else None) for name in NAMES
    }
    ref_o, ref_lse = reference(module, *leaves.values(), lo.long(), hi.long())
    errors = {"o": rel_err(o, tokens(ref_o))}
    if kind == "residual":
        assert lse is None
    else:
        errors["lse"] = rel_err(lse, tokens(ref_lse))
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(seed))
    softmax = () if kind == "residual" else (o, lse)  # what the backward of a gate reads
    grads = module.read_state_bwd(*kernel_args, *softmax, do, scale=SCALE)
    (tokens(ref_o) * do.double()).sum().backward()
    for name, grad in zip([n for n in NAMES if n in args], grads, strict=True):
        ref = leaves[name].grad
        if ref is None:  # no path from the input to o (e.g. no memory is visible)
            ref = torch.zeros_like(leaves[name])
        errors["d" + name] = rel_err(grad, tokens(ref) if name in PER_TOKEN else ref)
    worst = {k: v for k, v in errors.items() if v > (tol if k in ("o", "lse") else grad_tol)}
    assert not worst, f"{kind}: {errors}"
    return errors


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["residual", "grm"])
def test_fp32_packed_windows(kernels, kind):
    """K=6 != V=10 (non-powers of two), chunks that see nothing, lo > 0; two batch rows of
    one head."""
    check(kernels(kind), make_inputs(), batch=2)


@pytest.mark.parametrize("kind", ["residual", "grm"])
def test_short_chunks(kernels, kind):
    """Chunks cut short (segment ends, packed sequences): a block's tokens run on past a short
    chunk into the next one; no token of another block is read or written."""
    check(kernels(kind), make_inputs(), counts=[4, 2, 4, 1, 3, 4])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["residual", "grm"])
def test_bf16_inputs(kernels, kind):
    check(kernels(kind), make_inputs(dtype=torch.bfloat16), tol=2e-2, grad_tol=4e-2)


@pytest.mark.parametrize("kind", ["residual", "grm"])
def test_no_memories(kernels, kind):
    """N = 0: o = o_on (and lse = the online logit); dstates / ddescriptors are empty."""
    module = kernels(kind)
    inputs = make_inputs(windows=([0, 0, 0], [0, 0, 0]))
    assert inputs["states"].shape[1] == 0
    check(module, inputs)
    tokens = token_layout(torch.ones(3, 4, dtype=torch.bool), 1)
    o_on, logit_on, lo = tokens(inputs["o_on"]), tokens(inputs["logit_on"]), [0, 0, 0]
    gate = [] if kind == "residual" else [logit_on, tokens(inputs["conn"]), inputs["descriptors"]]
    args = [tokens(inputs["q"]), o_on, *gate, inputs["states"], [(0, 4), (4, 4), (8, 4)], lo, lo]
    o, lse = module.read_state_fwd(*args, scale=SCALE)
    assert torch.equal(o, o_on)
    assert lse is None if kind == "residual" else torch.equal(lse, logit_on)


@pytest.mark.parametrize("kind", ["residual", "grm"])
def test_no_chunks(kernels, kind):
    """NC = 0 with memories (e.g. a call that only carries a cache): empty outputs, zero
    gradients for the memories."""
    inputs = make_inputs(windows=([], []), num_memories=2)
    check(kernels(kind), inputs)


# Chunks 1-3 and 5-6 see the same memories: each run is one row block of the kernels (up to
# ROWS rows), chunk 4 is a block of its own between them.
RUNS = ([0, 0, 0, 0, 0, 2, 2], [0, 2, 2, 2, 3, 5, 5])


@pytest.mark.parametrize("kind", ["residual", "grm"])
def test_row_blocks_of_several_chunks(kernels, kind):
    """Consecutive chunks with the same visible memories share one program (a row block), so
    each state is read once per block; a block of 3 chunks, one of 2, and blocks cut by
    ROWS."""
    module = kernels(kind)
    cpu = torch.device("cpu")
    chunks = tuple((4 * n, 4) for n in range(7))
    blocks, windows = module._row_blocks(chunks, *map(tuple, RUNS), 4, cpu)
    # (first token, tokens) and (lo, hi), heaviest first; ties keep their order
    assert blocks.tolist() == [[16, 4], [20, 8], [4, 12], [0, 4]]
    assert windows.tolist() == [[0, 3], [2, 5], [0, 2], [0, 0]]
    short = ((0, 4), (4, 2), (6, 4), (10, 4), (14, 1))
    blocks, windows = module._row_blocks(short, (0,) * 5, (1,) * 5, 2, cpu)
    assert blocks.tolist() == [[0, 6], [6, 8], [14, 1]] and windows.tolist() == [[0, 1]] * 3
    # a gap between chunks (tokens no chunk covers) ends a block
    blocks, _ = module._row_blocks(((0, 2), (4, 4)), (0, 0), (1, 1), 2, cpu)
    assert blocks.tolist() == [[0, 2], [4, 4]]
    check(module, make_inputs(windows=RUNS))


@pytest.mark.parametrize("kind", ["residual", "grm"])
def test_tensor_core_path(kernels, kind):
    """C, K and V >= 16 (the dot shapes a GPU runs), V = 20 padded to 32."""
    inputs = make_inputs(bh=1, chunk=16, key_dim=16, value_dim=20, windows=([0, 0, 1], [0, 2, 4]))
    check(kernels(kind), inputs)


def test_templates_bake_the_plan(kernels):
    """Constants come from the plan: the spec's gate scale; soup renders as grm."""
    assert not hasattr(kernels("residual"), "GATE_SCALE")
    assert kernels("grm").GATE_SCALE == 0.75 and kernels("soup").GATE_SCALE == 0.75
