"""none: one segment, no boundary; nothing is ever cached (docs/method.md section 2)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcgen.components.base import SegmentationComponent
from mcgen.ir.errors import IRError


class NoSegments(SegmentationComponent):
    name = "none"
    has_boundaries = False

    def ends(self, length: int | None, boundaries: Any, seq_len: int) -> list[int]:
        return []

    def check_node(self, node: str, attrs: Mapping[str, Any]) -> None:
        if attrs.get("length") is not None or attrs.get("boundaries") is not None:
            raise IRError(f"segmentation {node!r}: kind none takes no length or boundaries")


COMPONENT = NoSegments()
