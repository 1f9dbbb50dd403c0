"""linear: S <- S + v_t k_t^T (docs/method.md section 3), plain linear attention's memory."""

from __future__ import annotations

from mcgen.components.recurrences.matrix import MatrixRecurrence


class Linear(MatrixRecurrence):
    name = "linear"
    additive = True
    attention_form = True
    triton_template = "package/triton_recurrence.py.jinja"


COMPONENT = Linear()
