"""The needle generator. One example of seq_len tokens T, value length L, vocabulary V:

    f f f ... f  k v1 .. vL  f f ... f | k v1 .. v(L-1)
                 ^ the needle, at a uniform position p  ^ the question: the last L tokens'
                                                          labels are v1 .. vL

The key k is a token of [1, V/2) and appears twice: in the needle and as the question;
fillers f and the value tokens are drawn from [V/2, V), so a value looks like filler and
only the key's position tells it apart. The label of the question's first token is v1,
of v1 it is v2, and so on; every other label is -100. A model that cannot see the
needle can only guess a value token: accuracy 1 / (V - V/2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mcgen.mqar.config import IGNORE_INDEX, key_tokens, value_tokens
from mcgen.niah.config import NIAHDataConfig, NIAHSplit, slice_key


@dataclass(frozen=True)
class NIAHData:
    """One generated split: inputs and labels, both [num_examples, seq_len] int64, and
    where each needle's key sits (the needle's first position), [num_examples]."""

    inputs: torch.Tensor
    labels: torch.Tensor
    needle_at: torch.Tensor
    split: NIAHSplit

    def __len__(self) -> int:
        return self.inputs.shape[0]

    @property
    def key(self) -> str:
        return slice_key(self.split.seq_len)


def generate(split: NIAHSplit) -> NIAHData:
    """Generate one split, deterministically from split.seed."""
    rng = np.random.default_rng(split.seed)
    n, length, value_len, vocab = (
        split.num_examples,
        split.seq_len,
        split.value_len,
        split.vocab_size,
    )
    key_range, value_range = key_tokens(vocab), value_tokens(vocab)
    # filler, from the value tokens
    inputs = rng.integers(value_range.start, value_range.stop, size=(n, length))
    keys = rng.integers(key_range.start, key_range.stop, size=n)
    values = rng.integers(value_range.start, value_range.stop, size=(n, value_len))
    # The needle (value_len + 1 tokens) must end before the question (the last value_len).
    needle_at = rng.integers(0, length - 2 * value_len, size=n)

    rows = np.arange(n)
    inputs[rows, needle_at] = keys
    inputs[rows[:, None], needle_at[:, None] + 1 + np.arange(value_len)] = values
    question = length - value_len
    inputs[:, question] = keys
    inputs[:, question + 1 :] = values[:, :-1]
    labels = np.full((n, length), IGNORE_INDEX, dtype=np.int64)
    labels[:, question:] = values
    return NIAHData(
        torch.from_numpy(inputs.astype(np.int64)),
        torch.from_numpy(labels),
        torch.from_numpy(needle_at.astype(np.int64)),
        split,
    )


def load_data(config: NIAHDataConfig) -> tuple[list[NIAHData], list[NIAHData]]:
    """(train slices, test slices) of a data config; generating is fast, nothing is cached."""
    train = [generate(s) for s in config.splits("train")]
    test = [generate(s) for s in config.splits("test")]
    return train, test
