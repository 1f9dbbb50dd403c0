"""logarithmic C: segments end at C, 2C, 4C, 8C, ... (lengths C, C, 2C, 4C; method 2)."""

from __future__ import annotations

from mcgen.components.segmentations.by_length import LengthSegmentation


class Logarithmic(LengthSegmentation):
    name = "logarithmic"
    rule_template = "package/segments/logarithmic.jinja"

    def next_end(self, end: int, length: int) -> int:
        return end * 2


COMPONENT = Logarithmic()
