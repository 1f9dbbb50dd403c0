"""Triton kernels of the cached reads in attention form (templates/package/triton_read_attention).

Checked against an fp64 torch reference of the same contract that builds every cached state
C_i explicitly from k, v, g (the recurrence of docs/method.md section 3) and reads it in
state form, forward and gradients of every input, under Triton's interpreter. The kernels take
the unscaled query and apply the read scale themselves. The reference works on chunked inputs
[BH, NC, C, ...] with padding slots; the kernels get the same tokens in place, [B, T, H, ...]
with a chunk table (first token, count).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

KEY_DIM, VALUE_DIM = 6, 10  # K != V, neither a power of two
HEADS_BATCH = 2
SCALE = 0.75  # not 1: the kernels apply the read scale themselves


@dataclass(frozen=True)
class Layout:
    """Chunks of C slots, as the glue lays them out; valid[n][s] is False in padding slots."""

    valid: list[list[bool]]
    visible_lo: list[int]
    visible_hi: list[int]
    mem_first: list[int]
    mem_last: list[int]


def make_layout(pieces, chunk: int, init: str) -> Layout:
    """pieces: per packed sequence, (segment lengths, whether its last segment is closed)."""
    valid, lo, hi, mem_first, mem_last = [], [], [], [], []
    for lengths, closes_last in pieces:
        base, piece_start = len(mem_first), len(valid)
        for s, length in enumerate(lengths):
            segment_start = len(valid)
            for offset in range(0, length, chunk):
                width = min(chunk, length - offset)
                valid.append([j < width for j in range(chunk)])
                lo.append(base)
                hi.append(len(mem_first))
            if s < len(lengths) - 1 or closes_last:
                mem_first.append(piece_start if init == "checkpoint" else segment_start)
                mem_last.append(len(valid) - 1)
    return Layout(valid, lo, hi, mem_first, mem_last)


# Segments of 1 and 2 chunks (C = 4), some with padding slots, the last one still open.
MIXED = [([4, 8, 3, 6, 4, 5], False)]


def make_inputs(layout: Layout, *, decay: bool, gated: bool, dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    num_chunks, chunk = len(layout.valid), len(layout.valid[0])
    num_memories = len(layout.mem_first)
    valid = torch.tensor(layout.valid, dtype=torch.float64)  # [NC, C]

    def rand(*shape, pad=True):
        x = torch.randn(*shape, generator=gen, dtype=torch.float64)
        return x * valid.view(num_chunks, chunk, *[1] * (len(shape) - 3)) if pad else x

    shape = (HEADS_BATCH, num_chunks, chunk)
    inputs = {
        "q": rand(*shape, KEY_DIM).to(dtype),  # unscaled
        "k": rand(*shape, KEY_DIM).to(dtype),
        "v": rand(*shape, VALUE_DIM).to(dtype),
        # log decays of about -0.3 a slot: strong enough that every slot's decay matters
        "g": -F.softplus(rand(*shape) - 1.0).float() * valid.float() if decay else None,
        "o_on": rand(*shape, VALUE_DIM).float(),
        "logit_on": rand(*shape).float() if gated else None,
        "conn": rand(*shape, KEY_DIM).to(dtype) if gated else None,
        "descriptors": rand(HEADS_BATCH, num_memories, KEY_DIM, pad=False).float()
        if gated
        else None,
        "visible_lo": torch.tensor(layout.visible_lo, dtype=torch.int32),
        "visible_hi": torch.tensor(layout.visible_hi, dtype=torch.int32),
        "mem_first": torch.tensor(layout.mem_first, dtype=torch.int32),
        "mem_last": torch.tensor(layout.mem_last, dtype=torch.int32),
    }
    do = rand(*shape, VALUE_DIM).float()
    return inputs, do


# read_attention_fwd's arguments, in order ("chunks": the chunk table); a variant takes only
# those it reads (no g without decay, no gate for residual).
ARGS = (
    "q",
    "k",
    "v",
    "g",
    "o_on",
    "logit_on",
    "conn",
    "descriptors",
    "chunks",
    "visible_lo",
    "visible_hi",
    "mem_first",
    "mem_last",
)
PER_TOKEN = ("q", "k", "v", "g", "o_on", "logit_on", "conn")
# Inputs with a gradient, in the order read_attention_bwd returns those it takes.
DIFFERENTIABLE = ("q", "k", "v", "g", "o_on", "logit_on", "conn", "descriptors")


def reference(inputs, *, aggregation: str, gate_scale: float | None, top_k: int | None):
    """(o, lse) in fp64 from states C_i built token by token (S <- exp(g) S + v k^T), read by
    the query at SCALE."""
    q, k, v, g = inputs["q"], inputs["k"], inputs["v"], inputs["g"]
    heads_batch, num_chunks, chunk, key_dim = q.shape
    value_dim = v.shape[-1]
    # Snapshot S after the last slot of chunk mem_last[i], S starting from zero at the start of
    # chunk mem_first[i]: one pass per distinct start.
    ranges = list(zip(inputs["mem_first"].tolist(), inputs["mem_last"].tolist(), strict=True))
    snapshots = {}
    for first in sorted({first for first, _ in ranges}):
        ends = {last for start, last in ranges if start == first}
        state = q.new_zeros(heads_batch, value_dim, key_dim)
        for n in range(first, max(ends) + 1):
            for s in range(chunk):
                if g is not None:
                    state = g[:, n, s, None, None].exp() * state
                state = state + v[:, n, s, :, None] * k[:, n, s, None, :]
            if n in ends:
                snapshots[first, n] = state
    states = [snapshots[r] for r in ranges]
    num_memories = len(states)
    memory_ids = torch.arange(num_memories)
    visible = (memory_ids >= inputs["visible_lo"][:, None].long()) & (
        memory_ids < inputs["visible_hi"][:, None].long()
    )  # [NC, N]
    if num_memories:
        reads = torch.einsum("bnck,bivk->bnciv", SCALE * q, torch.stack(states, dim=1))
    else:
        reads = q.new_zeros(heads_batch, num_chunks, chunk, 0, value_dim)
    if aggregation == "residual":
        return inputs["o_on"] + (reads * visible[None, :, None, :, None]).sum(-2), None
    logits = gate_scale * torch.einsum("bnck,bik->bnci", inputs["conn"], inputs["descriptors"])
    logits = logits.masked_fill(~visible[None, :, None, :], -torch.inf)
    if aggregation == "ssc" and num_memories > top_k:
        chosen = logits.topk(top_k, dim=-1).indices
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, chosen, True)
        logits = logits.masked_fill(~keep, -torch.inf)
    all_logits = torch.cat([inputs["logit_on"][..., None], logits], dim=-1)
    weights = torch.softmax(all_logits, dim=-1)
    o = weights[..., :1] * inputs["o_on"] + torch.einsum(
        "bnci,bnciv->bncv", weights[..., 1:], reads
    )
    return o, torch.logsumexp(all_logits, dim=-1)


def poisoned(shape, device, dtype=torch.float32):
    """The launchers' _alloc with every output and scratch buffer starting as NaN: an element
    no kernel writes (or a scratch entry read before it is written) shows up."""
    return torch.full(shape, math.nan, dtype=dtype, device=device)


def rel_err(out, ref) -> float:
    ref = ref.detach().double()
    scale = ref.norm()
    diff = (out.double() - ref).norm()
    return float(diff / scale) if scale > 0 else float(diff)


class TokenLayout:
    """The kernels' view of a Layout: its valid slots, in order, as tokens [B, T, H, ...]
    (B * H = HEADS_BATCH) and the chunk table."""

    def __init__(self, layout: Layout, batch: int):
        self.valid = torch.tensor(layout.valid, dtype=torch.bool)  # [NC, C]
        self.batch = batch
        counts = self.valid.sum(1)
        firsts = counts.cumsum(0) - counts
        self.chunks = torch.stack([firsts, counts], dim=1).to(torch.int32)  # [NC, 2]

    def tokens(self, x):
        """[BH, NC, C, ...] -> [B, T, H, ...]"""
        x = x[:, self.valid]  # [BH, T, ...]
        return x.unflatten(0, (self.batch, -1)).transpose(1, 2).contiguous()

    def chunked(self, x):
        """[B, T, H, ...] -> [BH, NC, C, ...], zero in padding slots."""
        x = x.transpose(1, 2).flatten(0, 1)  # [BH, T, ...]
        out = x.new_zeros(x.shape[0], *self.valid.shape, *x.shape[2:])
        out[:, self.valid] = x
        return out


def check_case(
    pkg,
    layout: Layout,
    *,
    aggregation: str,
    decay: bool,
    dtype=torch.float32,
    top_k: int | None = None,
    batch: int = 1,
    monkeypatch,
):
    """Run fwd + bwd of the kernels and compare o, lse and every gradient with the reference;
    returns o and the gradients laid out as the reference's inputs (zero in padding slots)."""
    mod = importlib.import_module(pkg.__name__ + ".triton_read_attention")
    monkeypatch.setattr(mod, "_alloc", poisoned)
    gated = aggregation != "residual"
    gate_scale = getattr(mod, "GATE_SCALE", None)
    assert getattr(mod, "TOP_K", None) == top_k
    inputs, do = make_inputs(layout, decay=decay, gated=gated, dtype=dtype)
    view = TokenLayout(layout, batch)
    args = {**inputs, "chunks": view.chunks}
    args = {
        name: view.tokens(args[name]) if name in PER_TOKEN else args[name]
        for name in ARGS
        if args[name] is not None
    }

    o, lse = mod.read_attention_fwd(*args.values(), scale=SCALE)
    softmax = (o, lse) if gated else ()  # what the backward of a gate reads
    found = mod.read_attention_bwd(*args.values(), *softmax, view.tokens(do), scale=SCALE)
    found = dict(zip([n for n in DIFFERENTIABLE if n in args], found, strict=True))
    o = view.chunked(o)
    lse = None if lse is None else view.chunked(lse)

    def laid_out(name):  # as the reference's inputs; None for one the variant does not take
        if name not in found:
            return None
        return view.chunked(found[name]) if name in PER_TOKEN else found[name]

    grads = [laid_out(name) for name in DIFFERENTIABLE]
    valid = view.valid  # compared where the kernels wrote: the tokens

    ref_inputs = {
        name: (x.double().requires_grad_() if name in DIFFERENTIABLE else x)
        for name, x in inputs.items()
        if x is not None
    }
    ref_inputs.update({name: None for name, x in inputs.items() if x is None})
    ref_o, ref_lse = reference(
        ref_inputs, aggregation=aggregation, gate_scale=gate_scale, top_k=top_k
    )
    leaves = [name for name in DIFFERENTIABLE if ref_inputs[name] is not None]
    ref_grads = torch.autograd.grad(
        ref_o, [ref_inputs[n] for n in leaves], do.double(), materialize_grads=True
    )
    ref_grads = dict(zip(leaves, ref_grads, strict=True))

    tol, grad_tol = (1e-5, 2e-5) if dtype == torch.float32 else (2e-2, 4e-2)
    assert o.dtype == torch.float32 and torch.isfinite(o).all()
    assert rel_err(o[:, valid], ref_o[:, valid]) <= tol
    if gated:
        assert torch.isfinite(lse).all() and rel_err(lse[:, valid], ref_lse[:, valid]) <= tol
    else:
        assert lse is None
    for name, grad in zip(DIFFERENTIABLE, grads, strict=True):
        if ref_inputs[name] is None:
            assert grad is None, name
            continue
        assert grad.shape == inputs[name].shape, name
        assert torch.isfinite(grad).all(), name
        ref = ref_grads[name]
        if name in PER_TOKEN:
            grad, ref = grad[:, valid], ref[:, valid]
        err = rel_err(grad, ref)
        assert err <= grad_tol, f"d{name}: relative error {err:.3g}"
    return o, grads


AGGREGATIONS = {
    "residual": ("residual", "", None),
    "grm": ("grm", "", None),
    "ssc1": ("ssc", ", top_k: 1", 1),
    "ssc2": ("ssc", ", top_k: 2", 2),
}


def package(build_tiny, name: str, recurrence: str, chunk_size: int = 4):
    aggregation, extra, _ = AGGREGATIONS[name]
    return build_tiny(
        read_form="attention",
        aggregation=aggregation,
        aggregation_extra=extra,
        recurrence=recurrence,
        key_dim=KEY_DIM,
        value_dim=VALUE_DIM,
        chunk_size=chunk_size,
    )


@pytest.mark.slow
@pytest.mark.parametrize("init", ["checkpoint", "independent"])
@pytest.mark.parametrize("recurrence", ["linear", "decay"])
@pytest.mark.parametrize("name", list(AGGREGATIONS))
def test_matches_reference(build_tiny, monkeypatch, name, recurrence, init):
    """Segments of 1 and 2 chunks, padding slots, rows seeing 0 to 5 memories (fewer and
    more than top_k), memory ranges shared (checkpoint) or disjoint (independent)."""
    aggregation, _, top_k = AGGREGATIONS[name]
    pkg = package(build_tiny, name, recurrence)
    layout = make_layout(MIXED, 4, init)
    check_case(
        pkg,
        layout,
        aggregation=aggregation,
        decay=recurrence == "decay",
        top_k=top_k,
        monkeypatch=monkeypatch,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "recurrence", "init", "dtype"),
    [
        ("grm", "decay", "checkpoint", torch.bfloat16),
        ("ssc2", "linear", "independent", torch.bfloat16),
        ("residual", "decay", "independent", torch.bfloat16),
        ("grm", "linear", "independent", torch.float16),
    ],
)
def test_16_bit_inputs(build_tiny, monkeypatch, name, recurrence, init, dtype):
    """q, k, v and conn in bf16 or fp16, read in their dtype (the interpreter's dots take
    them as fp32); fp32 outputs."""
    aggregation, _, top_k = AGGREGATIONS[name]
    check_case(
        package(build_tiny, name, recurrence),
        make_layout(MIXED, 4, init),
        aggregation=aggregation,
        decay=recurrence == "decay",
        dtype=dtype,
        top_k=top_k,
        monkeypatch=monkeypatch,
    )


def test_dot_operands_take_the_inputs_dtype(build_tiny, monkeypatch):
    """On a GPU 16-bit inputs give 16-bit dot operands (tensor cores) and fp32 inputs exact
    fp32 dots; the interpreter always multiplies in fp32 (it gets 16-bit dots wrong)."""
    mod = importlib.import_module(
        package(build_tiny, "grm", "linear").__name__ + ".triton_read_attention"
    )
    tl = mod.tl
    monkeypatch.setattr(mod, "INTERPRET", False)
    assert mod._dot_dtype(torch.bfloat16) == tl.bfloat16
    assert mod._dot_dtype(torch.float16) == tl.float16
    assert mod._dot_dtype(torch.float32) == tl.float32
    monkeypatch.setattr(mod, "INTERPRET", True)
    assert mod._dot_dtype(torch.bfloat16) == tl.float32


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "recurrence", "init"),
    [
        ("grm", "decay", "checkpoint"),
        ("ssc2", "decay", "independent"),
        ("residual", "linear", "checkpoint"),
    ],
)
def test_packed_sequences(build_tiny, monkeypatch, name, recurrence, init):
    """Two packed sequences: the second reads memories lo > 0 whose ranges start after chunk 0;
    the first ends on a segment end, so its last memory is cached but read by no chunk."""
    aggregation, _, top_k = AGGREGATIONS[name]
    layout = make_layout([([4, 8, 3], True), ([6, 4, 5], False)], 4, init)
    assert any(hi > lo > 0 for lo, hi in zip(layout.visible_lo, layout.visible_hi, strict=True))
    _, grads = check_case(
        package(build_tiny, name, recurrence),
        layout,
        aggregation=aggregation,
        decay=recurrence == "decay",
        top_k=top_k,
        batch=2,  # two batch rows of one head each
        monkeypatch=monkeypatch,
    )
    unread = layout.mem_last[2]  # memory 2 closes the first sequence: its keys get no gradient
    assert grads[1][:, unread].abs().max() == 0 and grads[2][:, unread].abs().max() == 0


@pytest.mark.parametrize(
    ("name", "recurrence"), [("residual", "decay"), ("grm", "linear"), ("ssc1", "decay")]
)
def test_no_memories(build_tiny, monkeypatch, name, recurrence):
    """N = 0 (one open segment): o is the online read, and no gradient reaches q, k, v."""
    aggregation, _, top_k = AGGREGATIONS[name]
    layout = make_layout([([10], False)], 4, "checkpoint")
    assert not layout.mem_first
    o, grads = check_case(
        package(build_tiny, name, recurrence),
        layout,
        aggregation=aggregation,
        decay=recurrence == "decay",
        top_k=top_k,
        monkeypatch=monkeypatch,
    )
    inputs, _ = make_inputs(
        layout, decay=recurrence == "decay", gated=aggregation != "residual", dtype=torch.float32
    )
    torch.testing.assert_close(o, inputs["o_on"], rtol=1e-6, atol=1e-6)
    for grad in grads[:3]:
        assert grad.abs().max() == 0


@pytest.mark.slow
@pytest.mark.parametrize(("name", "init"), [("ssc2", "checkpoint"), ("grm", "independent")])
def test_chunk_of_16(build_tiny, monkeypatch, name, init):
    """C = 16 fills the row block (no padded rows); segments of 1 and 2 chunks, a short one."""
    aggregation, _, top_k = AGGREGATIONS[name]
    check_case(
        package(build_tiny, name, "decay", chunk_size=16),
        make_layout([([16, 32, 20, 8], False)], 16, init),
        aggregation=aggregation,
        decay=True,
        top_k=top_k,
        monkeypatch=monkeypatch,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "fields",
    [
        {
            "aggregation": "grm",
            "recurrence": "decay",
            "init": "checkpoint",
            "segments": "{kind: explicit, boundaries: [3, 7, 12]}",
        },
        {
            "aggregation": "ssc",
            "aggregation_extra": ", top_k: 1",
            "init": "independent",
            "segments": "{kind: logarithmic, length: 2}",
        },
    ],
)
def test_forward_matches_package_reference(build_tiny, fields):
    """The contract on the package's own chunk layout: memory i spans chunks from the last
    reset up to its closing chunk; o gathered back to tokens equals `reference` (the spec)."""
    pkg = build_tiny(read_form="attention", key_dim=KEY_DIM, value_dim=VALUE_DIM, **fields)
    mod = importlib.import_module(pkg.__name__ + ".triton_read_attention")
    segments = importlib.import_module(pkg.__name__ + ".spec")
    layout = importlib.import_module(pkg.__name__ + ".backend_torch").chunk_layout(
        ((0, 21, 0, 0),), 21
    )
    decay = fields.get("recurrence") == "decay"
    gen = torch.Generator().manual_seed(1)
    batch, seq_len, heads = 1, 21, 2
    q, k, u = torch.randn(3, batch, seq_len, heads, KEY_DIM, generator=gen, dtype=torch.float64)
    v = torch.randn(batch, seq_len, heads, VALUE_DIM, generator=gen, dtype=torch.float64)
    g = -F.softplus(torch.randn(batch, seq_len, heads, generator=gen, dtype=torch.float64) - 1)
    scale = KEY_DIM**-0.5

    # Per token in fp64: the online read S_t (scale q_t), the online logit, the descriptors.
    state = q.new_zeros(batch, heads, VALUE_DIM, KEY_DIM)
    o_on, logit_on, descriptors = torch.zeros_like(v), torch.zeros_like(g), []
    for t in range(seq_len):
        if t == segments.segment_start(t):
            key_sum, seen = q.new_zeros(batch, heads, KEY_DIM), 0
            if fields["init"] == "independent":
                state = torch.zeros_like(state)
        fade = g[:, t, :, None, None].exp() if decay else 1.0
        state = fade * state + v[:, t, :, :, None] * k[:, t, :, None, :]
        o_on[:, t] = (state @ (scale * q[:, t, :, :, None]))[..., 0]
        key_sum, seen = key_sum + k[:, t], seen + 1
        logit_on[:, t] = mod.GATE_SCALE * (u[:, t] * key_sum / seen).sum(-1)
        if segments.segment_end(t) == t + 1:
            descriptors.append(key_sum / seen)

    chunks = [(row[0], sum(t < seq_len for t in row)) for row in layout.index]
    mem_last = [n for n, closes in enumerate(layout.closes) if closes][: layout.num_memories]
    mem_first = [max(j for j in range(last + 1) if layout.resets[j]) for last in mem_last]
    o, _ = mod.read_attention_fwd(
        *(x.float().contiguous() for x in (q, k, v)),
        *([g.float()] if decay else []),
        o_on.float(),
        logit_on.float(),
        u.float().contiguous(),
        torch.stack(descriptors[: len(mem_last)], dim=2).flatten(0, 1).float(),
        torch.tensor(chunks, dtype=torch.int32),
        torch.tensor(layout.visible_lo, dtype=torch.int32),
        torch.tensor(layout.visible_hi, dtype=torch.int32),
        torch.tensor(mem_first, dtype=torch.int32),
        torch.tensor(mem_last, dtype=torch.int32),
        scale=scale,
    )
    assert len(mem_last) >= 3
    assert rel_err(o, pkg.reference(q, k, v, u, *([g] if decay else []))) <= 1e-5
