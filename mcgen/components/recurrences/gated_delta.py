"""gated_delta: S <- exp(g_t) S (I - beta_t k_t k_t^T) + beta_t v_t k_t^T (method section 3)."""

from __future__ import annotations

from mcgen.components.fields import DECAY_NORMALIZER
from mcgen.components.recurrences.matrix import LOG_DECAY, WRITE_STRENGTH, MatrixRecurrence


class GatedDelta(MatrixRecurrence):
    name = "gated_delta"
    inputs = (LOG_DECAY, WRITE_STRENGTH)
    fields = (DECAY_NORMALIZER,)
    delta_rule = True
    default_key_norm = "l2"  # the update is stable for unit keys only
    triton_template = "package/triton_delta.py.jinja"


COMPONENT = GatedDelta()
