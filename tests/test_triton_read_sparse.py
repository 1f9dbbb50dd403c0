"""ssc's grouped sparse read (templates/package/triton_read_sparse.py.jinja).

The template is rendered through real ssc specs (`build_tiny`) and run under the Triton
interpreter; outputs and every gradient are compared with the fp64 transcription of the
cached-read contract that tests/test_triton_read_state.py uses (dense masks, autograd), on
the chunked layout's rows, in order or through a shuffled row table.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from test_triton_read_state import (
    NAMES,
    PER_TOKEN,
    SCALE,
    make_inputs,
    reference,
    rel_err,
    token_layout,
)

# kind -> spec fields of build_tiny; gate_scale is not the default K^-1/2, so the tests see
# that the value baked into the kernels is the spec's.
SPECS = {
    f"ssc{k}": {"aggregation": "ssc", "aggregation_extra": f", top_k: {k}, gate_scale: 0.75"}
    for k in (1, 2, 3)
}
GRM = {"aggregation": "grm", "aggregation_extra": ", gate_scale: 0.75"}


@pytest.fixture(scope="module")
def kernels(build_tiny):
    """kind -> the rendered triton_read_sparse module of that spec."""
    cache: dict[str, object] = {}

    def get(kind: str):
        if kind not in cache:
            pkg = build_tiny(**SPECS[kind])
            cache[kind] = importlib.import_module(pkg.__name__ + ".triton_read_sparse")
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


# Tensors with one entry (or vector) per row: the ones a row table addresses.
PER_ROW = ("q", "o_on", "logit_on", "conn")


def sparse_args(inputs, permutation=None):
    """read_sparse's arguments for make_inputs' chunked inputs: row r of (head, slot) order
    is stored at row permutation[r] of every per-row tensor (in order when None)."""
    bh, num_chunks, chunk = inputs["q"].shape[:3]
    args = {name: inputs[name] for name in NAMES}
    if permutation is None:
        args["rows"] = torch.arange(bh * num_chunks * chunk)
    else:
        args["rows"] = permutation
        args.update({name: shuffle(args[name], permutation) for name in PER_ROW})
    args["slot_lo"] = inputs["visible_lo"].repeat_interleave(chunk)
    args["slot_hi"] = inputs["visible_hi"].repeat_interleave(chunk)
    return args


def shuffle(x, permutation):
    """A per-row tensor [BH, NC, C, ...] with row r moved to row permutation[r]."""
    flat = x.reshape(permutation.numel(), -1)
    stored = torch.empty_like(flat)
    stored[permutation] = flat
    return stored.view(x.shape)


def unshuffle(x, permutation):
    """The inverse of shuffle."""
    return x.reshape(permutation.numel(), -1)[permutation].view(x.shape)


def check(module, inputs, *, permutation=None, tol=1e-5, grad_tol=1e-5, seed=1):
    """fwd + bwd against fp64: o, lse and every gradient (relative error in norm)."""
    args = sparse_args(inputs, permutation)
    o, lse = module.read_sparse_fwd(*args.values(), scale=SCALE)
    do = torch.randn(inputs["o_on"].shape, generator=torch.Generator().manual_seed(seed))
    stored_do = do if permutation is None else shuffle(do, permutation)
    found = module.read_sparse_bwd(*args.values(), o, lse, stored_do, scale=SCALE)
    grads = dict(zip(NAMES, found, strict=True))
    if permutation is not None:
        o, lse = unshuffle(o, permutation), unshuffle(lse, permutation)
        grads.update({name: unshuffle(grads[name], permutation) for name in PER_ROW})
    leaves = {name: inputs[name].double().requires_grad_() for name in NAMES}
    lo, hi = inputs["visible_lo"].long(), inputs["visible_hi"].long()
    ref_o, ref_lse = reference(module, *leaves.values(), lo, hi)
    errors = {"o": rel_err(o, ref_o), "lse": rel_err(lse, ref_lse)}
    (ref_o * do.double()).sum().backward()
    for name, grad in grads.items():
        ref = leaves[name].grad
        errors["d" + name] = rel_err(grad, torch.zeros_like(leaves[name]) if ref is None else ref)
    worst = {k: v for k, v in errors.items() if v > (tol if k in ("o", "lse") else grad_tol)}
    assert not worst, errors
    return errors


@pytest.mark.parametrize("kind", ["ssc1", "ssc2", "ssc3"])
def test_fp32_packed_windows(kernels, kind):
    """K=6 != V=10 (non-powers of two), chunks that see nothing, lo > 0, fewer, as many and
    more visible memories than top_k."""
    check(kernels(kind), make_inputs())


def test_bf16_inputs(kernels):
    check(kernels("ssc2"), make_inputs(dtype=torch.bfloat16), tol=2e-2, grad_tol=4e-2)


def test_rows_through_a_shuffled_table(kernels):
    """Per-row tensors stored in any row order (another layout): the table addresses them."""
    inputs = make_inputs()
    rows = inputs["q"].shape[0] * inputs["q"].shape[1] * inputs["q"].shape[2]
    check(kernels("ssc2"), inputs, permutation=torch.randperm(rows, generator=torch.Generator()))


def test_tensor_core_path(kernels):
    """C, K and V >= 16 (the dot shapes a GPU runs), V = 20 padded to 32."""
    inputs = make_inputs(bh=1, chunk=16, key_dim=16, value_dim=20, windows=([0, 0, 1], [0, 2, 4]))
    check(kernels("ssc2"), inputs)


def test_memories_chosen_by_more_rows_than_a_tile(kernels):
    """Two memories over 12 chunks of 16 rows, one chosen per row: each memory's pairs span
    several tiles (TILE = 64), in the forward and in the memory-major backward."""
    module = kernels("ssc1")
    inputs = make_inputs(bh=2, chunk=16, key_dim=16, value_dim=16, windows=([0] * 12, [2] * 12))
    chosen, _, _ = module._route(*(sparse_args(inputs)[name] for name in ROUTE_ARGS))
    assert chosen.view(2, -1).eq(0).sum(1).max() > module.TILE
    check(module, inputs)


ROUTE_ARGS = ("conn", "descriptors", "logit_on", "rows", "slot_lo", "slot_hi")


@pytest.mark.parametrize("kind", ["ssc2", "ssc3"])
def test_no_memories(kernels, kind):
    """N = 0: o = o_on and lse = the online logit; dstates / ddescriptors are empty."""
    module = kernels(kind)
    inputs = make_inputs(windows=([0, 0, 0], [0, 0, 0]))
    assert inputs["states"].shape[1] == 0
    check(module, inputs)
    o, lse = module.read_sparse_fwd(*sparse_args(inputs).values(), scale=SCALE)
    assert torch.equal(o, inputs["o_on"]) and torch.equal(lse, inputs["logit_on"])


def test_no_chunks(kernels):
    """NC = 0 with memories (a call that only carries a cache): empty outputs, zero gradients
    for the memories."""
    check(kernels("ssc2"), make_inputs(windows=([], []), num_memories=2))


@pytest.mark.parametrize("kind", ["ssc1", "ssc2"])
def test_ties_choose_exactly_top_k_older_memories(kernels, kind):
    """Rows whose logits all tie (connector 0) mix exactly TOP_K memories: the oldest."""
    module = kernels(kind)
    inputs = make_inputs()
    inputs["conn"][:, :, 1:3] = 0.0
    check(module, inputs)
    args = sparse_args(inputs)
    o, lse = module.read_sparse_fwd(*args.values(), scale=SCALE)
    visible = (inputs["visible_hi"] - inputs["visible_lo"]).clamp(max=module.TOP_K)
    expected = torch.logaddexp(
        inputs["logit_on"][:, :, 1:3], torch.log(visible.double())[None, :, None]
    )
    assert torch.allclose(lse[:, :, 1:3].double(), expected, atol=1e-6)
    chosen, _, _ = module._route(*(args[name] for name in ROUTE_ARGS))
    chosen = chosen.view(*inputs["logit_on"].shape, module.TOP_K)[:, :, 1:3]  # tied rows
    for n, (lo, hi) in enumerate(zip(inputs["visible_lo"], inputs["visible_hi"], strict=True)):
        oldest = set(range(int(lo), min(int(hi), int(lo) + module.TOP_K)))
        assert all(set(pair.tolist()) - {-1} == oldest for pair in chosen[:, n].flatten(0, 1))


def test_with_enough_memories_it_is_grm(kernels, build_tiny):
    """TOP_K >= visible memories everywhere: ssc equals grm (same gate scale)."""
    grm = importlib.import_module(build_tiny(**GRM).__name__ + ".triton_read_state")
    inputs = make_inputs(windows=([0, 0, 1], [0, 2, 3]))
    tokens = token_layout(torch.ones(3, 4, dtype=torch.bool), 1)  # [BH, NC, C] -> [1, T, BH]
    args = {name: tokens(x) if name in PER_TOKEN else x for name, x in inputs.items()}
    lo, hi = args.pop("visible_lo").tolist(), args.pop("visible_hi").tolist()
    o_grm, lse_grm = grm.read_state_fwd(
        *args.values(), [(0, 4), (4, 4), (8, 4)], lo, hi, scale=SCALE
    )
    o_ssc, lse_ssc = kernels("ssc3").read_sparse_fwd(*sparse_args(inputs).values(), scale=SCALE)
    o_ssc, lse_ssc = tokens(o_ssc), tokens(lse_ssc)
    assert torch.allclose(o_grm, o_ssc, atol=1e-6) and torch.allclose(lse_grm, lse_ssc, atol=1e-6)


def test_states_no_row_chose_are_never_read(kernels):
    """NaN in a memory no row chose changes nothing, forward or backward (its gradients 0)."""
    module = kernels("ssc1")
    inputs = make_inputs(windows=([0], [4]), bh=1, seed=3)
    logits = torch.einsum("bnck,bik->bnci", inputs["conn"], inputs["descriptors"])
    unchosen = sorted(set(range(4)) - set(logits.argmax(-1).flatten().tolist()))
    assert unchosen, "pick a seed where some memory is chosen by no row"
    do = torch.randn(inputs["o_on"].shape, generator=torch.Generator().manual_seed(1))

    def run():
        args = sparse_args(inputs)
        o, lse = module.read_sparse_fwd(*args.values(), scale=SCALE)
        return (o, lse, *module.read_sparse_bwd(*args.values(), o, lse, do, scale=SCALE))

    clean = run()
    inputs["states"][:, unchosen] = math.nan
    for a, b in zip(clean, run(), strict=True):
        assert torch.equal(a, b)
    assert not clean[-1][:, unchosen].any() and not clean[-2][:, unchosen].any()


def test_pairs_are_grouped_by_head_and_memory_into_tiles(kernels):
    """100 pairs of one memory make tiles of 64 and 36; empty pairs get no tile; the
    tiles past the real count (the bound comes from the shapes) have count 0."""
    module = kernels("ssc2")
    slots, num_memories = 100, 3
    chosen = torch.full((2, slots, 2), -1, dtype=torch.int32)
    chosen[0, :, 0] = 2  # 100 pairs of memory 2 in head 0
    chosen[0, :50, 1] = 0  # 50 of memory 0
    chosen[1, :75, 1] = 2  # 75 of memory 2 in head 1
    chosen[0, 60, 1] = 1  # one of memory 1
    order, first, count = module._group(chosen.flatten(), 2, num_memories, slots)
    assert count.tolist() == [[50, 1, 100], [0, 0, 75]]
    for head in range(2):
        for memory in range(num_memories):
            pairs = order[first[head, memory] : first[head, memory] + count[head, memory]]
            assert pairs.tolist() == sorted(pairs.tolist())  # row order kept
            assert (chosen.flatten()[pairs.long()] == memory).all()
            assert (pairs.long() // (slots * 2) == head).all()
    tiles = module._tiles(first, count, chosen.numel())
    assert tiles.shape[0] == math.ceil(chosen.numel() / module.TILE) + 2 * num_memories
    real = tiles[tiles[:, 3] > 0].tolist()
    assert [row[:2] + row[3:] for row in real] == [
        [0, 0, 50],
        [0, 1, 1],
        [0, 2, 64],
        [0, 2, 36],
        [1, 2, 64],
        [1, 2, 11],
    ]
    assert real[3][2] == real[2][2] + 64  # the second tile of a memory starts 64 pairs on


def test_templates_bake_the_plan(kernels):
    """Constants come from the plan: the spec's gate scale and top_k."""
    assert [kernels(f"ssc{k}").TOP_K for k in (1, 2, 3)] == [1, 2, 3]
    assert all(kernels(kind).GATE_SCALE == 0.75 for kind in SPECS)
