"""Segment boundaries (docs/method.md section 2), as mcgen's cost model sees them.

Boundaries are absolute token positions and do not depend on the sequence length:
a segment is complete (and cached) once the sequence reaches its end boundary. The
generated packages carry their own copy of this rule (they never import mcgen);
tests check that the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence

from mcgen.components.registry import SEGMENTATIONS


def segment_ends(
    kind: str, length: int | None, boundaries: Sequence[int] | None, seq_len: int
) -> list[int]:
    """End positions of the segments that are complete within `seq_len` tokens.

    `constant` C: C, 2C, 3C, ...; `logarithmic` C: C, 2C, 4C, 8C, ... (lengths C, C,
    2C, 4C, ...); `explicit`: the given interior boundaries; `none`: no boundary. Each
    segmentation's rule is its component's (mcgen/components/segmentations/).
    """
    return SEGMENTATIONS.get(kind).ends(length, boundaries, seq_len)


def mean_visible(
    kind: str, length: int | None, boundaries: Sequence[int] | None, seq_len: int
) -> float:
    """Cached segments a token can read, averaged over the tokens 0 .. seq_len-1.

    Token t reads the segments that end at or before t, so segment ending at e is
    read by the seq_len - e tokens after it.
    """
    ends = segment_ends(kind, length, boundaries, seq_len)
    return sum(seq_len - e for e in ends) / seq_len if seq_len else 0.0
