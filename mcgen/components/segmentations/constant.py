"""constant C: segments end at C, 2C, 3C, ... (docs/method.md section 2)."""

from __future__ import annotations

from mcgen.components.segmentations.by_length import LengthSegmentation


class Constant(LengthSegmentation):
    name = "constant"
    rule_template = "package/segments/constant.jinja"

    def next_end(self, end: int, length: int) -> int:
        return end + length

    def period(self, length: int | None) -> int | None:
        return length


COMPONENT = Constant()
