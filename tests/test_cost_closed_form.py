"""The cost model's counts over tokens and chunks are closed forms: they agree with a
token-by-token count on short sequences, and a sequence of 10^9 tokens costs no more work
than a short one (issue 12, item 13: `inspect --seq-len 1e9` ran out of memory)."""

from __future__ import annotations

import itertools
import math
from bisect import bisect_right

import pytest
from spec_helpers import calls_made, make_spec

from mcgen.inspect_report import inspect_spec
from mcgen.passes.cost import SegmentEnds, SegmentSums, floor_sum
from mcgen.segments import segment_ends

SEGMENTATIONS = [
    ("constant", 1, None),
    ("constant", 3, None),
    ("constant", 8, None),
    ("logarithmic", 1, None),
    ("logarithmic", 3, None),
    ("explicit", None, (1, 2, 9, 30)),
    ("explicit", None, (5,)),
    ("none", None, None),
]


def counted(kind: str, length, boundaries, seq_len: int, chunk: int, top_k) -> SegmentSums:
    """The same numbers, token by token and chunk by chunk."""
    ends = segment_ends(kind, length, boundaries, seq_len)
    visible = [bisect_right(ends, t) for t in range(seq_len)]
    cap = math.inf if top_k is None else top_k
    chunk_visible = chunk_read = 0
    for start in range(0, seq_len, chunk):
        stop = min(start + chunk, seq_len)
        chunk_visible += visible[stop - 1]
        chunk_read += min(visible[stop - 1], cap * (stop - start))
    return SegmentSums(
        cached=len(ends),
        interior_ends=sum(e < seq_len for e in ends),
        visible=sum(visible),
        read=sum(min(v, cap) for v in visible),
        keys_read=sum(ends[v - 1] for v in visible if v),
        chunk_visible=chunk_visible,
        chunk_read=int(chunk_read),
    )


@pytest.mark.parametrize(("kind", "length", "boundaries"), SEGMENTATIONS)
def test_closed_forms_agree_with_counting_token_by_token(kind, length, boundaries) -> None:
    for seq_len, chunk, top_k in itertools.product(
        [1, 2, 5, 8, 9, 31, 64, 100], [1, 2, 4, 16], [None, 1, 2, 5]
    ):
        ends = SegmentEnds.of(kind, length, boundaries, seq_len)
        closed = SegmentSums.of(ends, seq_len, chunk, top_k)
        assert closed == counted(kind, length, boundaries, seq_len, chunk, top_k), (
            seq_len,
            chunk,
            top_k,
        )


def test_floor_sum_agrees_with_the_sum() -> None:
    for n, m, a, b in itertools.product(range(12), range(1, 9), range(12), range(12)):
        assert floor_sum(n, m, a, b) == sum((a * i + b) // m for i in range(n))


@pytest.mark.parametrize(
    ("segments", "aggregation", "extra"),
    [
        ("{kind: constant, length: 1}", "ssc", ", top_k: 3"),
        ("{kind: constant, length: 1}", "grm", ""),
        ("{kind: logarithmic, length: 1}", "residual", ""),
        ("{kind: explicit, boundaries: [3, 7, 12]}", "soup", ""),
    ],
)
def test_a_billion_tokens_cost_the_work_of_a_few(segments: str, aggregation: str, extra: str):
    spec = make_spec(segments=segments, aggregation=aggregation, aggregation_extra=extra)
    short = calls_made(lambda: inspect_spec(spec, 64), limit=10**7)
    calls_made(lambda: inspect_spec(spec, 10**9, batch=4), limit=2 * short)
    cost = inspect_spec(spec, 10**9).cost_after
    assert cost["seq_len"] == 10**9
    assert cost["cached_segments"] == SegmentEnds.of(*_segment_args(segments), 10**9).count(10**9)


def _segment_args(segments: str):
    if "constant" in segments:
        return ("constant", 1, None)
    if "logarithmic" in segments:
        return ("logarithmic", 1, None)
    return ("explicit", None, (3, 7, 12))
