"""The floor a recall score is read against: guessing among the value tokens seen."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from mcgen.mqar.config import IGNORE_INDEX, MQARSplit
from mcgen.mqar.data import generate as generate_mqar
from mcgen.mqar.guess import guess_accuracy
from mcgen.niah.config import NIAHSplit
from mcgen.niah.data import generate as generate_niah


@dataclass(frozen=True)
class Rows:
    inputs: torch.Tensor
    labels: torch.Tensor
    key: str = "rows"

    def __len__(self) -> int:
        return self.inputs.shape[0]


def test_a_guess_picks_among_the_distinct_values_seen_up_to_the_scored_position():
    # Vocabulary 8: values are 4..7. Row 0 scores position 4 after values 4, 5, 4 (two
    # distinct: 1/2); row 1 scores position 1 after one value (1); row 2 scores position
    # 0, before any value: a guess among all four (1/4).
    inputs = torch.tensor([[4, 1, 5, 4, 2, 6], [7, 2, 0, 0, 0, 0], [3, 4, 5, 6, 7, 0]])
    labels = torch.full_like(inputs, IGNORE_INDEX)
    labels[0, 4], labels[1, 1], labels[2, 0] = 5, 7, 4
    accuracy, per_slice = guess_accuracy([Rows(inputs, labels)], vocab_size=8)
    assert accuracy == pytest.approx((1 / 2 + 1 + 1 / 4) / 3)
    assert per_slice == {"rows": pytest.approx(accuracy)}


def zero_fillers(vocab_size: int, seq_len: int, num_pairs: int, num_examples: int):
    split = MQARSplit(
        vocab_size=vocab_size,
        seq_len=seq_len,
        num_pairs=num_pairs,
        num_examples=num_examples,
        seed=3,
        random_non_queries=False,
    )
    return generate_mqar(split)


def test_with_zero_fillers_every_mqar_query_guesses_among_its_pairs_values():
    for pairs in (2, 8):
        data = zero_fillers(256, 64, pairs, 50)
        assert guess_accuracy([data], 256)[0] == pytest.approx(1 / pairs)


def test_the_slices_pool_by_scored_positions_as_the_evaluation_does():
    accuracy, per_slice = guess_accuracy(
        [zero_fillers(64, 32, 2, 10), zero_fillers(64, 32, 4, 10)], 64
    )
    # 20 queries at 1/2, 40 at 1/4.
    assert accuracy == pytest.approx((20 / 2 + 40 / 4) / 60)
    assert sorted(per_slice.values()) == pytest.approx([1 / 4, 1 / 2])


@pytest.mark.parametrize(
    "data",
    [
        generate_mqar(MQARSplit(vocab_size=64, seq_len=48, num_pairs=4, num_examples=400, seed=2)),
        generate_niah(NIAHSplit(vocab_size=64, seq_len=40, value_len=2, num_examples=400, seed=2)),
    ],
    ids=["mqar random fillers", "needle"],
)
def test_a_guesser_that_draws_among_the_values_it_saw_scores_the_expectation(data):
    generator = torch.Generator().manual_seed(0)
    half = 32
    hits = scored = 0
    for row, position in (data.labels != IGNORE_INDEX).nonzero().tolist():
        before = data.inputs[row, : position + 1]
        seen = torch.unique(before[before >= half])
        picks = seen[torch.randint(len(seen), (20,), generator=generator)]
        hits += int((picks == data.labels[row, position]).sum())
        scored += 20
    expected = guess_accuracy([data], 64)[0]
    # Binomial standard error of the simulated mean, well inside 4 of them.
    error = (expected * (1 - expected) / scored) ** 0.5
    assert abs(hits / scored - expected) < 4 * error
    assert expected < 1 / 4 + 1e-9  # fillers among the values only lower it
