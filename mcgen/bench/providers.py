"""The implementations a benchmark times, each behind one call: inputs dict -> o [B, T, H, V].

| provider | computes | checked against |
| --- | --- | --- |
| `generated-triton` | the package's `mc_forward(..., backend="triton")` | its fp64 `reference` |
| `generated-torch` | the package's `mc_forward(..., backend="torch")` | its fp64 `reference` |
| `naive` | the spec as plain einsums (`naive_linear_mc`) | its fp64 `reference` |
| `sdpa` | causal softmax attention (`scaled_dot_product_attention`) | fp64 attention |
| `fla` | flash-linear-attention's `chunk_linear_attn`, unnormalised | fp64 linear attention |
| `fla-gated-delta` | fla's `chunk_gated_delta_rule` (gated_delta specs) | fp64 gated delta |

`naive` is the implementation a user writes first (docs/performance.md): every cached
state is materialised, and every (token, cached segment) read is one slice of a
[B, T, H, N, V] tensor. It supports the matrix memory `linear` with `constant` segments,
either init, every aggregation (none, residual, grm, soup, ssc), both pools and both
connectors; other specs are skipped with that reason.

`sdpa` and `fla` compute other functions (attention, plain linear attention): they are
the baselines the targets compare with, and take q, k and v only. `fla-gated-delta` is the
base recurrence of a gated_delta spec without its caches (Gated DeltaNet): it takes the
target's q, k, v, g and beta, so it runs for gated_delta targets only.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mcgen.bench.variants import Target
from mcgen.components.base import RecurrenceComponent, in_words
from mcgen.components.registry import AGGREGATIONS, RECURRENCES
from mcgen.passes.cost import attention_cost
from mcgen.passes.pipeline import compile_spec
from mcgen.spec import parse_spec

Inputs = dict[str, object]
Forward = Callable[[Inputs], torch.Tensor]

# Providers that compute the spec's own function (and depend on its segment length), and
# the baselines, which do not.
MC_PROVIDERS = ("generated-triton", "generated-torch", "naive")
BASELINES = ("sdpa", "fla", "fla-gated-delta")
ALL_PROVIDERS = MC_PROVIDERS + BASELINES
# The provider whose output anchors the check at the benchmark's own shape, where the
# per-token fp64 reference is too slow.
ANCHOR = "generated-torch"


@dataclass(frozen=True)
class Provider:
    name: str
    forward: Forward  # inputs -> o [B, T, H, V] in the inputs' dtype
    reference: Forward  # inputs (fp64) -> o [B, T, H, V] in fp64, the truth it is checked on
    flops: Callable[[int, int], float]  # (batch, seq_len) -> FLOPs of one forward
    baseline: bool  # True: does not compute the spec's function, does not depend on it
    reference_name: str = "fp64 reference"


@dataclass(frozen=True)
class Unavailable:
    name: str
    reason: str
    baseline: bool = False


def mc_flops(target: Target) -> Callable[[int, int], float]:
    """Forward FLOPs of the target at (batch, seq_len), from mcgen's cost model."""

    def flops(batch: int, seq_len: int) -> float:
        return float(compile_spec(target.spec, seq_len).after.graph["cost"]["flops"]) * batch

    return flops


def attention_flops(heads: int, key_dim: int, value_dim: int) -> Callable[[int, int], float]:
    def flops(batch: int, seq_len: int) -> float:
        return float(attention_cost(heads, key_dim, value_dim, seq_len, batch)["flops"])

    return flops


LINEAR_ATTENTION_SPEC = """name: linear_attention
memory: {{recurrence: {recurrence}, heads: {heads}, key_dim: {key_dim}, value_dim: {value_dim}}}
cache: {{segments: {{kind: none}}}}
aggregation: {{kind: none}}
layer: {{d_model: 64}}
"""


def linear_attention_flops(
    heads: int, key_dim: int, value_dim: int, recurrence: str = "linear"
) -> Callable[[int, int], float]:
    """A plain chunked recurrence without caches (chunk 64, as fla's kernels): linear
    attention, or another `recurrence`, from the cost model."""
    text = LINEAR_ATTENTION_SPEC.format(
        recurrence=recurrence, heads=heads, key_dim=key_dim, value_dim=value_dim
    )
    spec = parse_spec(text, f"<{recurrence} recurrence>")

    def flops(batch: int, seq_len: int) -> float:
        return float(compile_spec(spec, seq_len).after.graph["cost"]["flops"]) * batch

    return flops


# --- the spec's own function -------------------------------------------------------------


def generated(target: Target, backend: str, device: torch.device) -> Provider | Unavailable:
    name = f"generated-{backend}"
    backends = tuple(getattr(target.package, "BACKENDS", ()))
    if backend not in backends:
        return Unavailable(name, f"{target.name} has no {backend} backend (BACKENDS = {backends})")
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return Unavailable(
            name, "Triton kernels need CUDA; on CPU set TRITON_INTERPRET=1 (very slow)"
        )
    package = target.package

    def forward(inputs: Inputs) -> torch.Tensor:
        return package.mc_forward(**inputs, backend=backend)

    return Provider(name, forward, package_reference(target), mc_flops(target), baseline=False)


def package_reference(target: Target) -> Forward:
    """The package's per-token fp64 `reference`, called on an inputs dict."""
    reference = target.package.reference

    def truth(inputs: Inputs) -> torch.Tensor:
        return reference(**inputs)

    return truth


def naive_support(target: Target) -> str | None:
    """Why `naive` cannot compute this spec, or None when it can."""
    spec = target.spec
    if spec.memory.recurrence != "linear":
        return f"naive supports the linear recurrence only, not {spec.memory.recurrence}"
    if spec.cache.segments.kind != "constant":
        return f"naive supports constant segments only, not {spec.cache.segments.kind}"
    return None


def naive(target: Target, device: torch.device) -> Provider | Unavailable:
    reason = naive_support(target)
    if reason is not None:
        return Unavailable("naive", reason)
    spec = target.spec
    agg = spec.aggregation
    options = {
        "segment_length": spec.cache.segments.length,
        "init": spec.cache.init,
        "aggregation": agg.kind,
        "pool": agg.pool,
        "connector": agg.connector,
        "gate_scale": agg.gate_scale,
        "top_k": agg.top_k,
    }

    def forward(inputs: Inputs) -> torch.Tensor:
        return naive_linear_mc(inputs["q"], inputs["k"], inputs["v"], inputs.get("u"), **options)

    return Provider("naive", forward, package_reference(target), mc_flops(target), baseline=False)


def naive_linear_mc(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    segment_length: int,
    init: str = "checkpoint",
    aggregation: str = "grm",
    pool: str = "mean",
    connector: str = "separate",
    gate_scale: float | None = None,
    top_k: int | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Memory caching over a linear matrix memory with constant segments, as plain einsums.

    docs/method.md written the obvious way: the state at the end of every segment (a
    cumulative sum of the segments' v k^T, in fp32 as method.md keeps states), every
    cached read of every token ([B, T, H, N, V], all of them, masked afterwards), the gate
    logits against every segment's descriptor, a softmax (top-k first for ssc).
    """
    batch, seq_len, heads, key_dim = q.shape
    value_dim = v.shape[-1]
    dtype = q.dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32  # states: fp32 at least
    size = segment_length
    n_seg = math.ceil(seq_len / size)
    pad = n_seg * size - seq_len
    scale = key_dim**-0.5 if scale is None else scale
    gate_scale = key_dim**-0.5 if gate_scale is None else gate_scale
    if connector == "query":
        u = q
    if AGGREGATIONS.get(aggregation).gated and u is None:
        raise ValueError(f"{aggregation} with the separate connector needs u")

    def split(x: torch.Tensor) -> torch.Tensor:  # [B, T, H, D] -> [B, N, C, H, D]
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        return x.reshape(batch, n_seg, size, heads, x.shape[-1])

    qs, ks, vs = split(q * scale), split(k), split(v)
    # The memory written by each segment, then the state at each segment end: [B, N, H, V, K].
    writes = torch.einsum("bnchv,bnchk->bnhvk", vs.to(work), ks.to(work))
    ends = writes.cumsum(dim=1) if init == "checkpoint" else writes
    starts = torch.cat([torch.zeros_like(ends[:, :1]), ends[:, :-1]], dim=1)
    if init != "checkpoint":
        starts = torch.zeros_like(starts)
    ends, starts = ends.to(dtype), starts.to(dtype)

    # Online read: the state at the segment's start, plus the segment so far (causal).
    causal = torch.ones(size, size, dtype=torch.bool, device=q.device).tril()
    scores = torch.einsum("bnchk,bndhk->bnhcd", qs, ks).masked_fill(~causal, 0)
    online = torch.einsum("bnhvk,bnchk->bnchv", starts, qs)
    online = online + torch.einsum("bnhcd,bndhv->bnchv", scores, vs)
    combine = AGGREGATIONS.get(aggregation)
    if not combine.reads_cache:
        return online.reshape(batch, n_seg * size, heads, value_dim)[:, :seq_len]

    # Every token reads every cached state: [B, N, C, H, N_cached, V].
    reads = torch.einsum("bihvk,bnchk->bnchiv", ends, qs)
    seg = torch.arange(n_seg, device=q.device)
    visible = (seg[None, :] < seg[:, None])[None, :, None, None, :]  # [1, N, 1, 1, N_cached]
    if combine.sums_reads:
        out = online + (reads * visible[..., None]).sum(dim=-2)
        return out.reshape(batch, n_seg * size, heads, value_dim)[:, :seq_len]

    us = split(u).to(work)
    kf = ks.to(work)
    descriptors = kf.sum(dim=2)  # [B, N, H, K]
    prefix = kf.cumsum(dim=2)  # [B, N, C, H, K]: the online descriptor is the causal prefix
    if pool == "mean":
        descriptors = descriptors / size  # only complete segments are ever read
        count = torch.arange(1, size + 1, device=q.device, dtype=work)
        prefix = prefix / count[:, None, None]
    logit_online = gate_scale * (us * prefix).sum(dim=-1, keepdim=True)  # [B, N, C, H, 1]
    logits = gate_scale * torch.einsum("bnchk,bihk->bnchi", us, descriptors)
    keep = visible.expand_as(logits)
    if combine.selects_top_k:
        assert top_k is not None
        masked = logits.masked_fill(~keep, float("-inf"))
        chosen = masked.topk(min(top_k, n_seg), dim=-1).indices  # routing: no gradient
        keep = keep & torch.zeros_like(keep).scatter(-1, chosen, True)
    logits = logits.masked_fill(~keep, float("-inf"))
    weights = torch.softmax(torch.cat([logit_online, logits], dim=-1), dim=-1).to(dtype)
    out = weights[..., :1] * online + torch.einsum("bnchi,bnchiv->bnchv", weights[..., 1:], reads)
    return out.reshape(batch, n_seg * size, heads, value_dim)[:, :seq_len]


# --- baselines ---------------------------------------------------------------------------


def _heads_first(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)


def sdpa(dims: tuple[int, int, int], device: torch.device) -> Provider:
    def forward(inputs: Inputs) -> torch.Tensor:
        q, k, v = (_heads_first(inputs[n]) for n in ("q", "k", "v"))
        return _heads_first(F.scaled_dot_product_attention(q, k, v, is_causal=True))

    return Provider(
        "sdpa",
        forward,
        softmax_attention_reference,
        attention_flops(*dims),
        baseline=True,
        reference_name="fp64 softmax attention",
    )


def softmax_attention_reference(inputs: Inputs) -> torch.Tensor:
    q, k, v = (inputs[n].double() for n in ("q", "k", "v"))
    seq_len = q.shape[1]
    scores = torch.einsum("bthk,bshk->bhts", q, k) * q.shape[-1] ** -0.5
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=q.device).tril()
    weights = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    return torch.einsum("bhts,bshv->bthv", weights, v)


def linear_attention_reference(inputs: Inputs) -> torch.Tensor:
    q, k, v = (inputs[n].double() for n in ("q", "k", "v"))
    seq_len = q.shape[1]
    scores = torch.einsum("bthk,bshk->bhts", q, k) * q.shape[-1] ** -0.5
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=q.device).tril()
    return torch.einsum("bhts,bshv->bthv", scores.masked_fill(~causal, 0), v)


def fla(dims: tuple[int, int, int], device: torch.device) -> Provider | Unavailable:
    try:
        from fla.ops.linear_attn import chunk_linear_attn
    except Exception as exc:  # not installed, or installed but broken
        return Unavailable(
            "fla", f"flash-linear-attention is not importable ({type(exc).__name__})", True
        )
    if device.type != "cuda":
        return Unavailable("fla", "flash-linear-attention's kernels need CUDA", True)
    params = inspect.signature(chunk_linear_attn).parameters
    options: dict[str, object] = {"normalize": False} if "normalize" in params else {}
    if "head_first" in params:
        options["head_first"] = False  # [B, T, H, D], as mcgen

    def forward(inputs: Inputs) -> torch.Tensor:
        q, k, v = (inputs[n] for n in ("q", "k", "v"))
        out = chunk_linear_attn(q, k, v, scale=q.shape[-1] ** -0.5, **options)
        return out[0] if isinstance(out, tuple) else out

    return Provider(
        "fla",
        forward,
        linear_attention_reference,
        linear_attention_flops(*dims),
        baseline=True,
        reference_name="fp64 causal linear attention",
    )


def fla_gated_delta(target: Target, device: torch.device) -> Provider | Unavailable:
    name = "fla-gated-delta"
    recurrence = RECURRENCES.of(target.spec)
    if not _gated_delta_rule(recurrence):
        names = in_words([r.name for r in RECURRENCES if _gated_delta_rule(r)], "or")
        return Unavailable(name, f"it reads g and beta: {names} specs only", True)
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception as exc:  # not installed, or installed but broken
        return Unavailable(
            name, f"flash-linear-attention is not importable ({type(exc).__name__})", True
        )
    if device.type != "cuda":
        return Unavailable(name, "flash-linear-attention's kernels need CUDA", True)
    params = inspect.signature(chunk_gated_delta_rule).parameters
    options: dict[str, object] = {"head_first": False} if "head_first" in params else {}

    def forward(inputs: Inputs) -> torch.Tensor:
        q, k, v, g, beta = (inputs[n] for n in ("q", "k", "v", "g", "beta"))
        scale = q.shape[-1] ** -0.5
        out = chunk_gated_delta_rule(q, k, v, g.float(), beta, scale=scale, **options)
        return out[0] if isinstance(out, tuple) else out

    return Provider(
        name,
        forward,
        gated_delta_reference,
        linear_attention_flops(*target.dims, recurrence=recurrence.name),
        baseline=True,
        reference_name="fp64 gated delta rule",
    )


def _gated_delta_rule(recurrence: RecurrenceComponent) -> bool:
    """What fla computes: a matrix delta-rule memory that reads g and beta."""
    reads = set(recurrence.rate_inputs({})) if recurrence.memory == "matrix" else set()
    return recurrence.delta_rule and reads == {"g", "beta"}


def gated_delta_reference(inputs: Inputs) -> torch.Tensor:
    """S_t = exp(g_t) S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T, o_t = scale S_t q_t,
    token by token in fp64 (docs/method.md)."""
    q, k, v, g, beta = (inputs[n].double() for n in ("q", "k", "v", "g", "beta"))
    batch, seq_len, heads, key_dim = q.shape
    state = q.new_zeros(batch, heads, v.shape[-1], key_dim)  # [B, H, V, K]
    out = []
    for t in range(seq_len):
        k_t, b_t = k[:, t], beta[:, t, :, None]  # [B, H, K], [B, H, 1]
        state = state * g[:, t, :, None, None].exp()
        error = v[:, t] - torch.einsum("bhvk,bhk->bhv", state, k_t)  # [B, H, V]
        state = state + torch.einsum("bhv,bhk->bhvk", b_t * error, k_t)
        out.append(torch.einsum("bhvk,bhk->bhv", state, q[:, t]) * key_dim**-0.5)
    return torch.stack(out, dim=1)


# name -> factory(target, device). Tests may add entries (a provider made to disagree).
PROVIDERS: dict[str, Callable[[Target, torch.device], Provider | Unavailable]] = {
    "generated-triton": lambda target, device: generated(target, "triton", device),
    "generated-torch": lambda target, device: generated(target, "torch", device),
    "naive": naive,
    "sdpa": lambda target, device: sdpa(target.dims, device),
    "fla": lambda target, device: fla(target.dims, device),
    "fla-gated-delta": fla_gated_delta,
}


def make_provider(name: str, target: Target, device: torch.device) -> Provider | Unavailable:
    if name not in PROVIDERS:
        raise KeyError(f"unknown provider {name!r}; known: {', '.join(PROVIDERS)}")
    return PROVIDERS[name](target, device)
