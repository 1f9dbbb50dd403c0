"""decay: S <- exp(g_t) S + v_t k_t^T (docs/method.md section 3).

g = logsigmoid(x W_g) / layer.decay_normalizer, so a larger normalizer keeps the decay near 1.
"""

from __future__ import annotations

from mcgen.components.fields import DECAY_NORMALIZER
from mcgen.components.recurrences.matrix import LOG_DECAY, MatrixRecurrence


class Decay(MatrixRecurrence):
    name = "decay"
    inputs = (LOG_DECAY,)
    fields = (DECAY_NORMALIZER,)
    attention_form = True  # a decayed sum of v k^T
    triton_template = "package/triton_recurrence.py.jinja"


COMPONENT = Decay()
