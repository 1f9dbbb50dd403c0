"""none: only the online memory is read; nothing is cached (a plain recurrent layer)."""

from __future__ import annotations

from mcgen.components.base import AggregationComponent


class NoAggregation(AggregationComponent):
    name = "none"
    reads_cache = False


COMPONENT = NoAggregation()
