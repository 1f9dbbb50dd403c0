"""Drop-in use of generated packages: packed sequences, the FLA / Hugging Face layer
convention with padding masks and a decode cache, generation, and decode cost."""

from __future__ import annotations

import importlib

import pytest
import torch
from spec_helpers import MATRIX_RECURRENCES, spec_text
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mcgen.export import export_spec
from mcgen.packages import import_package

SEGMENTS = {
    "constant": "{kind: constant, length: 8}",
    "logarithmic": "{kind: logarithmic, length: 4}",
    "explicit": "{kind: explicit, boundaries: [3, 9, 10, 20]}",
    "none": "{kind: none}",
}
AGGREGATIONS = {"none": "", "residual": "", "grm": "", "ssc": ", top_k: 2"}
RECURRENCES = MATRIX_RECURRENCES


def _inputs(package, batch, seq_len, *, heads=2, dim=8, seed=0):
    selftest = importlib.import_module(f"{package.__name__}.selftest")
    return selftest.make_inputs(batch, seq_len, heads, dim, dim, dtype=torch.float64, seed=seed)


def _rel(a, b) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


# -- packed variable-length sequences ----------------------------------------------------------


@pytest.mark.parametrize("agg", list(AGGREGATIONS))
@pytest.mark.parametrize("init", ["checkpoint", "independent"])
@pytest.mark.parametrize("segments", list(SEGMENTS))
@pytest.mark.parametrize("recurrence", ["linear", "gated_delta"])
def test_packed_sequences_equal_a_loop_over_sequences(build_tiny, recurrence, segments, init, agg):
    package = build_tiny(
        recurrence=recurrence,
        segments=SEGMENTS[segments],
        init=init,
        aggregation=agg,
        aggregation_extra=AGGREGATIONS[agg],
    )
    lengths = [13, 0, 1, 22, 9]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    x = _inputs(package, 1, sum(lengths))
    packed, caches = package.mc_forward(**x, cu_seqlens=cu_seqlens, output_cache=True)
    assert len(caches) == len(lengths)
    for i, (a, b) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist(), strict=True)):
        if a == b:
            assert caches[i].position == 0 and caches[i].num_cached == 0
            continue
        alone, cache = package.mc_forward(**{n: t[:, a:b] for n, t in x.items()}, output_cache=True)
        assert _rel(packed[:, a:b], alone) < 1e-12  # segments restart at the sequence start
        assert caches[i].position == cache.position == b - a
        assert caches[i].num_cached == cache.num_cached
        assert _rel(caches[i].state, cache.state) < 1e-12
        if cache.num_cached:
            assert _rel(caches[i].states, cache.states) < 1e-12


def test_packed_sequences_gradients_match(build_tiny):
    package = build_tiny(recurrence="decay", aggregation="ssc", aggregation_extra=", top_k: 1")
    x = _inputs(package, 1, 30)
    leaves = {n: t.clone().requires_grad_(True) for n, t in x.items()}
    package.mc_forward(**leaves, cu_seqlens=[0, 17, 30]).square().sum().backward()
    for a, b in [(0, 17), (17, 30)]:
        part = {n: t[:, a:b].clone().requires_grad_(True) for n, t in x.items()}
        package.mc_forward(**part).square().sum().backward()
        for name in part:
            assert _rel(leaves[name].grad[:, a:b], part[name].grad) < 1e-12


def test_packed_sequences_reject_bad_offsets(build_tiny):
    package = build_tiny()
    x = _inputs(package, 1, 10)
    with pytest.raises(ValueError, match="from 0 to T = 10"):
        package.mc_forward(**x, cu_seqlens=[0, 4, 9])
    with pytest.raises(ValueError, match="must not decrease"):
        package.mc_forward(**x, cu_seqlens=[0, 6, 4, 10])
    with pytest.raises(ValueError, match="B = 1"):
        package.mc_forward(**_inputs(package, 2, 10), cu_seqlens=[0, 10])
    _, cache = package.mc_forward(**x, output_cache=True)
    with pytest.raises(ValueError, match="no initial_cache"):
        package.mc_forward(**x, cu_seqlens=[0, 10], initial_cache=cache)


# -- the FLA / Hugging Face calling convention ------------------------------------------------


def _layer(package, seed=0):
    torch.manual_seed(seed)
    return package.MCLayer(16, layer_idx=0).double()


def test_both_calling_conventions_give_the_same_output(build_tiny):
    package = build_tiny(recurrence="gated_delta", aggregation="grm")
    layer = _layer(package)
    x = torch.randn(2, 19, 16, dtype=torch.float64)
    out, attentions, cache = layer(hidden_states=x)
    assert attentions is None and cache is None
    assert torch.equal(out, layer(x))
    out2, _, cache = layer(hidden_states=x, use_cache=True)
    assert torch.equal(out2, out)
    assert isinstance(cache, package.MCStateCache) and cache.get_seq_length(0) == 19
    assert cache[0].position == 19 and 0 in cache and len(cache) == 1


def test_layer_without_index_cannot_cache(build_tiny):
    package = build_tiny()
    layer = package.MCLayer(16)
    with pytest.raises(ValueError, match="layer_idx"):
        layer(hidden_states=torch.randn(1, 4, 16), use_cache=True)


@pytest.mark.parametrize("agg", ["none", "residual", "grm", "ssc"])
def test_padding_is_as_if_absent(build_tiny, agg):
    package = build_tiny(
        recurrence="decay",
        segments=SEGMENTS["logarithmic"],
        aggregation=agg,
        aggregation_extra=AGGREGATIONS[agg],
    )
    layer = _layer(package)
    lengths = [11, 19, 4]
    seq_len = max(lengths)
    x = torch.randn(len(lengths), seq_len, 16, dtype=torch.float64)
    mask = torch.zeros(len(lengths), seq_len, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, seq_len - n :] = 1  # left padding, as for generation
    out, _, _ = layer(hidden_states=x, attention_mask=mask)
    for b, n in enumerate(lengths):
        alone = layer(x[b : b + 1, seq_len - n :])
        assert _rel(out[b : b + 1, seq_len - n :], alone) < 1e-12


# -- generation with the cache == recomputing the prefix ---------------------------------------


class TinyLM(nn.Module):
    """Embedding, blocks of (norm, MCLayer, norm, MLP), tied output: a causal LM."""

    def __init__(self, package, vocab=23, d_model=16, layers=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.mixers = nn.ModuleList(package.MCLayer(d_model, layer_idx=i) for i in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(2 * layers))
        self.mlps = nn.ModuleList(
            nn.Sequential(
                nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model)
            )
            for _ in range(layers)
        )

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False):
        h = self.embed(input_ids)
        for i, mixer in enumerate(self.mixers):
            mixed, _, past_key_values = mixer(
                hidden_states=self.norms[2 * i](h),
                attention_mask=attention_mask,
                past_key_values=past_key_values,
                use_cache=use_cache,
            )
            h = h + mixed
            h = h + self.mlps[i](self.norms[2 * i + 1](h))
        return h @ self.embed.weight.T, past_key_values


@pytest.mark.parametrize("agg", ["grm", "ssc"])
@pytest.mark.parametrize("recurrence", ["linear", "gated_delta"])
def test_generation_with_cache_matches_recomputing_the_prefix(tmp_path, recurrence, agg):
    # The layers come from an export: the standalone project a user would install.
    spec = tmp_path / "lm.yaml"
    spec.write_text(
        spec_text(
            name="lm_mixer",
            recurrence=recurrence,
            segments=SEGMENTS["constant"],
            aggregation=agg,
            aggregation_extra=", top_k: 1" if agg == "ssc" else "",
        )
    )
    exported = export_spec(spec, tmp_path / "project", test=False)
    package = import_package(tmp_path / "project" / exported.name)
    torch.manual_seed(0)
    model = TinyLM(package).double().eval()
    prompts = [[3, 5, 7, 1, 2, 9, 4], [8, 6, 2, 2, 11, 5, 3, 1, 7, 20, 4, 6], [1]]
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):  # left padding
        ids[b, width - len(p) :] = torch.tensor(p)
        mask[b, width - len(p) :] = 1

    steps = 14  # crosses segment ends (length 8) for every prompt
    with torch.no_grad():
        # With the cache: prefill once, then one token at a time.
        logits, cache = model(ids, attention_mask=mask, use_cache=True)
        cached_tokens, cached_logits = [], []
        full_mask = mask
        for _ in range(steps):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            cached_tokens.append(nxt)
            cached_logits.append(logits[:, -1])
            full_mask = torch.cat([full_mask, torch.ones_like(nxt)], dim=1)
            logits, cache = model(
                nxt, attention_mask=full_mask, past_key_values=cache, use_cache=True
            )

        # Without: the whole prefix again at every step.
        seq, full_mask = ids, mask
        for step in range(steps):
            logits, _ = model(seq, attention_mask=full_mask)
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            assert torch.equal(nxt, cached_tokens[step]), step
            assert _rel(logits[:, -1], cached_logits[step]) < 1e-10, step
            seq = torch.cat([seq, nxt], dim=1)
            full_mask = torch.cat([full_mask, torch.ones_like(nxt)], dim=1)
    assert cache.get_seq_length(0) == width + steps


# -- decode cost -------------------------------------------------------------------------------


class StateReads(TorchDispatchMode):
    """Records how many cached memories each op over [B, H, n, V, K] state stacks reads."""

    def __init__(self, value_dim, key_dim):
        super().__init__()
        self.shape_tail = (value_dim, key_dim)
        self.reads: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (
            torch.ops.aten.bmm.default,
            torch.ops.aten.mm.default,
            torch.ops.aten.mul.Tensor,
        ):
            for arg in args:
                if isinstance(arg, torch.Tensor) and arg.dim() >= 3:
                    self.reads.append(arg.numel() // (self.shape_tail[0] * self.shape_tail[1]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("agg, expected", [("ssc", 2), ("grm", 6)])
def test_decode_reads_only_the_memories_the_aggregation_needs(build_tiny, agg, expected):
    package = build_tiny(
        segments="{kind: constant, length: 4}",
        aggregation=agg,
        aggregation_extra=", top_k: 2" if agg == "ssc" else "",
        heads=1,
        key_dim=8,
        value_dim=8,
    )
    x = _inputs(package, 1, 25, heads=1)
    _, cache = package.mc_forward(**{n: t[:, :24] for n, t in x.items()}, output_cache=True)
    assert cache.num_cached == 6
    reads = StateReads(8, 8)
    with reads:
        package.mc_step(**{f"{n}_t": t[:, 24] for n, t in x.items()}, cache=cache)
    # The largest state stack any op touched: the top-k memories for ssc, all N for grm.
    assert max(reads.reads) == expected


@pytest.mark.parametrize("agg", ["none", "residual", "grm", "ssc"])
def test_state_size_reports_decode_memory_at_each_length(build_tiny, agg):
    package = build_tiny(aggregation=agg, aggregation_extra=AGGREGATIONS[agg])
    layer = package.MCLayer(16, layer_idx=0)
    sizes = [layer.state_size(n) for n in (1, 8, 16, 100)]
    if agg == "none":
        assert len(set(sizes)) == 1  # a plain RNN: constant
    else:
        assert sizes == sorted(sizes) and sizes[0] < sizes[-1]  # grows with cached segments
    with torch.no_grad():
        _, _, cache = layer(hidden_states=torch.randn(1, 100, 16), use_cache=True)
    assert cache.numel() == layer.state_size(100)
