"""The components a spec chose as written, before any pass rewrote them.

The backends follow the plan (mcgen/ir/plan.py); the reference and the files that describe
the spec follow the spec as the user wrote it. Both ask components for facts, never names.
"""

from __future__ import annotations

from dataclasses import dataclass

from mcgen.components.base import (
    AggregationComponent,
    RecurrenceComponent,
    SegmentationComponent,
)
from mcgen.components.registry import AGGREGATIONS, RECURRENCES, SEGMENTATIONS
from mcgen.spec import Spec


@dataclass(frozen=True)
class WrittenChoices:
    aggregation: AggregationComponent
    recurrence: RecurrenceComponent
    segmentation: SegmentationComponent
    connector: str | None  # the gate's connector as written

    @classmethod
    def of(cls, spec: Spec) -> WrittenChoices:
        return cls(
            aggregation=AGGREGATIONS.of(spec),
            recurrence=RECURRENCES.of(spec),
            segmentation=SEGMENTATIONS.of(spec),
            connector=spec.aggregation.connector,
        )

    @property
    def uses_u(self) -> bool:
        """The gate reads a separate connector input u (connector `query` reads q)."""
        return self.aggregation.gated and self.connector == "separate"
