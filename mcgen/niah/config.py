"""Needle-in-a-haystack settings: what data to generate (pydantic, strict).

`NIAHSplit` is one generated block, every field spelled out; `NIAHDataConfig` is what a
user writes (vocabulary, value length, seed, train and test slices) and derives the
splits from it, with train and test seeds that never coincide (mcgen.mqar's rule).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from mcgen.mqar.config import PositiveInt, Seed, _Strict, derive_seed


def check_sizes(vocab_size: int, seq_len: int, value_len: int) -> None:
    """Raise ValueError unless one example of this shape can be generated."""
    # The needle (key, value) and the question at the end (key, the value but its last
    # token) must not overlap: 2 * value_len + 1 tokens, and at least one of filler.
    needed = 2 * value_len + 2
    if seq_len < needed:
        raise ValueError(
            f"seq_len {seq_len} is too short for a needle of value_len {value_len}: it needs "
            f"at least 2 * value_len + 2 = {needed} tokens (the needle, the question, a filler)"
        )
    if vocab_size < 4:
        raise ValueError(f"vocab_size {vocab_size} is too small: at least 4 (keys and values)")


def slice_key(seq_len: int) -> str:
    """The name of a test slice in the metrics."""
    return f"seq_len={seq_len}"


class NIAHSplit(_Strict):
    """One generated block: num_examples sequences of seq_len tokens, one needle each."""

    vocab_size: Annotated[int, Field(ge=4)]
    seq_len: PositiveInt
    num_examples: PositiveInt
    value_len: Annotated[int, Field(ge=1, le=64)] = 1
    seed: Seed = 0

    @model_validator(mode="after")
    def _fits(self) -> NIAHSplit:
        check_sizes(self.vocab_size, self.seq_len, self.value_len)
        return self


class NIAHSlice(_Strict):
    """One part of the train or test set; test slices are usually longer than training."""

    seq_len: PositiveInt
    num_examples: PositiveInt


class NIAHDataConfig(_Strict):
    vocab_size: Annotated[int, Field(ge=4)] = 256
    # Tokens of the hidden value (a UUID needle is several): each is scored on its own.
    value_len: Annotated[int, Field(ge=1, le=64)] = 1
    seed: Seed = 0
    train: Annotated[list[NIAHSlice], Field(min_length=1)]
    test: Annotated[list[NIAHSlice], Field(min_length=1)]

    @model_validator(mode="after")
    def _check(self) -> NIAHDataConfig:
        for part in (self.train, self.test):
            for piece in part:
                check_sizes(self.vocab_size, piece.seq_len, self.value_len)
        lengths = [s.seq_len for s in self.test]
        duplicates = sorted({n for n in lengths if lengths.count(n) > 1})
        if duplicates:
            raise ValueError(f"test slices repeat seq_len: {', '.join(map(str, duplicates))}")
        return self

    def splits(self, which: Literal["train", "test"]) -> list[NIAHSplit]:
        """The generator's config of every slice of one split, each with its own seed."""
        part = self.train if which == "train" else self.test
        return [
            NIAHSplit(
                vocab_size=self.vocab_size,
                seq_len=piece.seq_len,
                num_examples=piece.num_examples,
                value_len=self.value_len,
                # Its own namespace: an MQAR and a needle slice of one seed differ.
                seed=derive_seed(self.seed, which, 1_000_000 + index),
            )
            for index, piece in enumerate(part)
        ]

    def test_keys(self) -> list[str]:
        return [slice_key(s.seq_len) for s in self.test]
