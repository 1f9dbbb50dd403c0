"""swla: sliding-window linear attention with window 2, the paper's Eq. 28 (method.md section 3).

S <- exp(g_t) S + beta_prev_t v_{t-1} k_{t-1}^T + beta_t v_t k_t^T: every token writes itself
and, once more, the token before it. The previous token's term is absent at a sequence's
first token and, under init: independent, at a segment's first (each segment is its own
RNN); under checkpoint it crosses segment ends as the memory does.

Everything swla adds lives in this module: its inputs and how MCLayer makes them, its cost,
the previous key and value its decode cache keeps, and its code pieces for the matrix
skeletons (the macros of templates/package/recurrences/matrix.jinja). It has no Triton
kernel: its packages run the torch backend.
"""

from __future__ import annotations

from mcgen.components.base import CarriedTensor, CostContext, RateInput
from mcgen.components.fields import DECAY_NORMALIZER
from mcgen.components.recurrences.matrix import LOG_DECAY, WRITE_STRENGTH, MatrixRecurrence

PREVIOUS_STRENGTH = RateInput(
    "beta_prev",
    "the previous token's write strength in (0, 1)",
    projection="torch.sigmoid({z})",
    sample="torch.sigmoid({z})",
)

# The code pieces. The chunked form splits each token's write in two streams that decay
# alike from the token on: its own (k_t, beta_t v_t) and the previous token's
# (k_{t-1}, beta_prev_t v_{t-1}); each is decay's chunked form, and the two add up.
CODE = """\
{% macro reference_begin() %}
    previous = torch.zeros_like(memory)  # v_{t-1} k_{t-1}^T: none before the first token
{%- endmacro %}

{% macro reference_restart() %}
            previous = torch.zeros_like(previous)  # the segment is its own RNN
{%- endmacro %}

{% macro reference_update() %}
        memory = (
            torch.exp(g[:, t])[..., None, None] * memory
            + beta_prev[:, t][..., None, None] * previous
            + beta[:, t][..., None, None] * write
        )
        previous = write  # what the next token's update writes again
{%- endmacro %}

{% macro chunk_prepare() %}
    # Each token's previous key and value: the call's tokens shifted by one, the cache's
    # last ones before the first; none at the first slot of a chunk where the memory
    # restarts (a sequence's start{{ ", a segment's" if plan.init == "independent" }}).
    k_prev = torch.cat([cache.last_key[:, None].to(work), k[:, :-1].to(work)], dim=1)
    v_prev = torch.cat([cache.last_value[:, None].to(work), v[:, :-1].to(work)], dim=1)
    restarts = torch.tensor(layout.resets, device=q.device)[:, None, None]  # [NC, 1, 1]
    first_slot = torch.arange(chunk, device=q.device)[:, None] == 0  # [C, 1]
    absent = restarts & first_slot  # [NC, C, 1]
    b_k_prev = torch.where(absent, 0, chunked(k_prev))  # [B, H, NC, C, K]
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()  # [C, C]
    b_g = chunked(g).cumsum(-1)  # [B, H, NC, C] log decay from the chunk start, inclusive
    b_g_last = b_g[..., -1:]  # [B, H, NC, 1] padding has g = 0, so this is the last token's
    # exp(G_i - G_j) for j <= i, zero above the diagonal (masked before exp: no overflow).
    b_decay = torch.where(causal, b_g[..., :, None] - b_g[..., None, :], -torch.inf).exp()
    # The two streams' values: beta_t v_t and beta_prev_t v_{t-1}, [B, H, NC, C, V].
    b_values = b_v * chunked(beta)[..., None]
    b_values_prev = torch.where(absent, 0, chunked(v_prev)) * chunked(beta_prev)[..., None]
    # Masked by where, not by the zeros of b_decay: 0 * NaN of a later key would be NaN.
    b_attn = torch.where(causal, (b_q @ b_k.transpose(-1, -2)) * b_decay, 0)  # [B, H, NC, C, C]
    b_attn_prev = torch.where(causal, (b_q @ b_k_prev.transpose(-1, -2)) * b_decay, 0)
    # What each chunk adds to the memory by its end, both streams: [B, H, NC, V, K].
    fade = (b_g_last - b_g)[..., None].exp()  # [B, H, NC, C, 1]
    b_written = (b_values * fade).transpose(-1, -2) @ b_k
    b_written = b_written + (b_values_prev * fade).transpose(-1, -2) @ b_k_prev
{%- endmacro %}

{% macro chunk_advance() %}
        memory = b_g_last[:, :, n, :, None].exp() * memory + b_written[:, :, n]
{%- endmacro %}

{% macro chunk_online() %}
    b_out = b_out * b_g[..., None].exp()
    b_out = b_out + causal_mix(b_attn, b_values) + causal_mix(b_attn_prev, b_values_prev)
{%- endmacro %}

{% macro step_update() %}
    # v_{t-1} k_{t-1}^T from the cache (zeros before a sequence's first token).
    previous = cache.last_value[..., :, None] * cache.last_key[..., None, :]
{% if plan.segmented and plan.init == "independent" %}
    if position == start:  # the previous token lies in the segment before (init: independent)
        previous = torch.zeros_like(previous)
{% endif %}
    write = v_t[..., :, None] * k_t[..., None, :]
    memory = (
        g_t.to(work).exp()[..., None, None] * memory
        + beta_prev_t.to(work)[..., None, None] * previous
        + beta_t.to(work)[..., None, None] * write
    )
{%- endmacro %}
"""


class SlidingWindow(MatrixRecurrence):
    name = "swla"
    inputs = (LOG_DECAY, WRITE_STRENGTH, PREVIOUS_STRENGTH)
    fields = (DECAY_NORMALIZER,)
    carried = (
        CarriedTensor("last_key", "k", "the last token's key (k_{t-1} of the next token)"),
        CarriedTensor("last_value", "v", "the last token's value (v_{t-1} of the next token)"),
    )
    code = CODE

    def scan_cost(self, ctx: CostContext) -> tuple[float, float]:
        """decay's, with the previous token's write: a second v k^T per token and a second
        intra-chunk product."""
        flops, moved = super().scan_cost(ctx)
        kv = ctx.key_dim * ctx.value_dim
        return flops + 2 * kv + ctx.chunk * (ctx.key_dim + ctx.value_dim), moved

    def held_numbers(self, ctx: CostContext) -> tuple[int, int]:
        """Decode: the last token's key and value; training: nothing beyond the states."""
        return ctx.key_dim + ctx.value_dim, 0


COMPONENT = SlidingWindow()
