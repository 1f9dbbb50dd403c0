"""Algorithm choice: read the cached memories in state form or in attention form.

docs/method.md section 7. State form: q_t against each cached state, about 2*K*V FLOPs
per state read. Attention form: q_t against the keys of the cached segments, each key
weighted by the gates of the caches that contain it, about 4*K FLOPs per visible token
(and 2*V more to add its value). State form wins when segments are longer than about
V/2 tokens. The spec's `compute.read_form` forces either; `auto` lets the cost decide.
Only matrix memories have the choice (a deep memory's cache is its weights).
"""

from __future__ import annotations

import networkx as nx

from mcgen.components.base import in_words
from mcgen.components.registry import RECURRENCES
from mcgen.ir.graph import clone
from mcgen.ir.ops import Scan, nodes_of, reads_from, rewrite
from mcgen.passes.cost import cached_read_flops


def read_form(graph: nx.DiGraph, seq_len: int) -> nx.DiGraph:
    """Set `form` on the cached read ("state" or "attention") and `form_reason`, why."""
    out = clone(graph)
    cached = reads_from(out, "cache")
    if cached is None or out.graph.get("memory") == "deep" or cached[1].form == "weights":
        return out
    node, read = cached
    state_flops, attention_flops = cached_read_flops(out, seq_len)
    costs = (
        f"at T={seq_len}: state form {state_flops:.3g} FLOPs per token and head, "
        f"attention form {attention_flops:.3g}"
    )
    [(_, scan)] = nodes_of(out, Scan)
    recurrence = RECURRENCES.get(scan.recurrence)
    if not recurrence.attention_form:
        readable = in_words([r.name for r in RECURRENCES if r.attention_form], "or")
        chosen = "state"
        why = f"the only form for a {recurrence.name} memory (attention form needs {readable})"
    elif read.requested_form != "auto":
        chosen, why = read.requested_form, f"forced by compute.read_form ({costs})"
    elif attention_flops < state_flops:
        chosen, why = "attention", f"cheaper {costs}: segments shorter than about V/2 tokens"
    else:
        chosen, why = "state", f"cheaper {costs}: segments longer than about V/2 tokens"
    # A choice, not a rewrite: it is kept on the node (and shown by `mcgen inspect`), not
    # added to the notes of what the passes rewrote.
    rewrite(out, node, form=chosen, form_reason=why)
    return out
