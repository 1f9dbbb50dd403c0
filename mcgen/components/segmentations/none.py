"""none: one segment, no boundary; nothing is ever cached (docs/method.md section 2)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mcgen.components.base import SegmentationComponent
from mcgen.ir.errors import IRError

if TYPE_CHECKING:
    from mcgen.ir.ops import Segmentation


class NoSegments(SegmentationComponent):
    name = "none"
    rule_template = "package/segments/none.jinja"
    has_boundaries = False

    def ends(self, length: int | None, boundaries: Any, seq_len: int) -> list[int]:
        return []

    def check_node(self, node: str, segmentation: Segmentation) -> None:
        if segmentation.length is not None or segmentation.boundaries is not None:
            raise IRError(f"segmentation {node!r}: kind none takes no length or boundaries")


COMPONENT = NoSegments()
