"""What the segmentations set by a `length` (constant, logarithmic) share."""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any

from mcgen.components.base import FieldProblem, SegmentationComponent
from mcgen.components.fields import SEGMENT_LENGTH
from mcgen.ir.errors import IRError

if TYPE_CHECKING:
    from mcgen.ir.ops import Segmentation
    from mcgen.spec.schema import Spec


class LengthSegmentation(SegmentationComponent):
    fields = (SEGMENT_LENGTH,)

    @abstractmethod
    def next_end(self, end: int, length: int) -> int:
        """The end after `end` (the first end is `length`)."""

    def ends(self, length: int | None, boundaries: Any, seq_len: int) -> list[int]:
        assert length is not None and length > 0
        out: list[int] = []
        end = length
        while end <= seq_len:
            out.append(end)
            end = self.next_end(end, length)
        return out

    def end_steps(self, spec: Spec) -> list[int]:
        length = spec.cache.segments.length
        return [] if length is None else [length]  # every end is a multiple of the length

    def rules(self, spec: Spec) -> list[FieldProblem]:
        if spec.cache.segments.length is None:
            return [("cache.segments", f"segments of kind {self.name} need a `length`")]
        return []

    def check_node(self, node: str, segmentation: Segmentation) -> None:
        length = segmentation.length
        if not isinstance(length, int) or length < 1:
            raise IRError(f"segmentation {node!r}: kind {self.name} needs a positive length")
        if segmentation.boundaries is not None:
            raise IRError(f"segmentation {node!r}: kind {self.name} takes no boundaries")
