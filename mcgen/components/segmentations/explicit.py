"""explicit: segments end at the given interior boundaries (docs/method.md section 2)."""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING, Any

from mcgen.components.base import FieldProblem, SegmentationComponent
from mcgen.components.fields import SEGMENT_BOUNDARIES
from mcgen.ir.errors import IRError

if TYPE_CHECKING:
    from mcgen.ir.ops import Segmentation
    from mcgen.spec.schema import Spec


class Explicit(SegmentationComponent):
    name = "explicit"
    rule_template = "package/segments/explicit.jinja"
    fields = (SEGMENT_BOUNDARIES,)

    def ends(self, length: int | None, boundaries: Any, seq_len: int) -> list[int]:
        assert boundaries is not None
        return [b for b in boundaries if b <= seq_len]

    def most_cached(self, segmentation: Segmentation) -> int | None:
        boundaries = segmentation.boundaries
        return len(boundaries) if boundaries else None

    def end_steps(self, spec: Spec) -> list[int]:
        return list(spec.cache.segments.boundaries or [])  # each end is itself

    def rules(self, spec: Spec) -> list[FieldProblem]:
        bounds = spec.cache.segments.boundaries
        if not bounds:
            return [("cache.segments", "explicit segments need a non-empty `boundaries` list")]
        for i in range(1, len(bounds)):
            if bounds[i] <= bounds[i - 1]:
                return [
                    (
                        f"cache.segments.boundaries.{i}",
                        "boundaries must be strictly increasing, got "
                        f"{bounds[i - 1]} then {bounds[i]}",
                    )
                ]
        return []

    def check_node(self, node: str, segmentation: Segmentation) -> None:
        bounds = segmentation.boundaries
        if not bounds or any(b <= a for a, b in pairwise(bounds)) or bounds[0] < 1:
            raise IRError(
                f"segmentation {node!r}: explicit boundaries must be a non-empty, strictly "
                f"increasing list of positive positions, got {bounds!r}"
            )
        if segmentation.length is not None:
            raise IRError(f"segmentation {node!r}: kind explicit takes no length")


COMPONENT = Explicit()
