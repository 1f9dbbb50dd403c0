"""What a model scores by guessing: the floor a recall score is read against.

In MQAR and the needle probe values are the tokens of [V/2, V). A model that learned
only "a value comes next, one of those already in the sequence" picks uniformly among
the distinct value tokens it has seen up to the scored position; its expected accuracy
is the mean of one over that count. With MQAR's zero fillers that is 1 / num_pairs for
the first query; with random fillers (or the needle's filler, drawn from the values)
it is lower. A score at or under it says the model binds no key to its value.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mcgen.mqar.config import IGNORE_INDEX, value_tokens
from mcgen.mqar.train import LabelledSplit


def _expected_hits(data: LabelledSplit, vocab_size: int) -> tuple[float, int]:
    """(sum over scored positions of 1 / distinct values seen, number of scored positions)."""
    inputs, labels = data.inputs, data.labels
    rows, length = inputs.shape
    positions = torch.arange(length).expand(rows, length)
    # Where each token first appears in its row; a position is new if it is that place.
    first = torch.full((rows, vocab_size), length, dtype=torch.long)
    first.scatter_reduce_(1, inputs, positions, reduce="amin")
    new = first.gather(1, inputs) == positions
    values = value_tokens(vocab_size)
    seen = torch.cumsum(new & (inputs >= values.start), dim=1)
    # Nothing seen yet: a guess among every value token.
    seen = torch.where(seen > 0, seen, len(values))
    where = labels != IGNORE_INDEX
    return float((1.0 / seen[where].double()).sum()), int(where.sum())


def guess_accuracy(
    slices: Sequence[LabelledSplit], vocab_size: int
) -> tuple[float, dict[str, float]]:
    """(expected accuracy over all scored positions, per slice) of guessing among the
    value tokens seen so far; keyed and pooled as mcgen.mqar.train.evaluate pools."""
    per_slice: dict[str, float] = {}
    all_hits, all_scored = 0.0, 0
    for data in slices:
        hits, scored = _expected_hits(data, vocab_size)
        per_slice[data.key] = hits / max(scored, 1)
        all_hits, all_scored = all_hits + hits, all_scored + scored
    return all_hits / max(all_scored, 1), per_slice
