"""delta: S <- S (I - beta_t k_t k_t^T) + beta_t v_t k_t^T (docs/method.md section 3)."""

from __future__ import annotations

from mcgen.components.recurrences.matrix import WRITE_STRENGTH, MatrixRecurrence


class Delta(MatrixRecurrence):
    name = "delta"
    inputs = (WRITE_STRENGTH,)
    delta_rule = True
    default_key_norm = "l2"  # the update is stable for unit keys only
    # The WY form of the chunked delta rule: its own kernel, under the same file name.
    triton_template = "package/triton_delta.py.jinja"


COMPONENT = Delta()
