"""dla: a deep memory trained by plain steps on the linear loss -<M(k_t), v_t> (method 6)."""

from __future__ import annotations

from mcgen.components.fields import DEEP
from mcgen.components.recurrences.deep import DeepRecurrence


class Dla(DeepRecurrence):
    name = "dla"
    fields = (DEEP,)


COMPONENT = Dla()
