"""MQAR settings: what data to generate and how to train on it (pydantic, strict).

`MQARSplit` is one generated block of examples, all its fields spelled out: it is what
the generator reads and what the on-disk cache is keyed by. `MQARDataConfig` is what a
user writes (the vocabulary, the power law, a seed, train and test slices) and derives
the splits from it, with train and test seeds that can never coincide.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

IGNORE_INDEX = -100  # the label of every position that is not a query (torch's default)


# The vocabulary of both recall tasks (MQAR and the needle): 0 is MQAR's filler, keys come
# from the lower half and values from the upper one, so a value is never a key.
def key_tokens(vocab_size: int) -> range:
    return range(1, vocab_size // 2)


def value_tokens(vocab_size: int) -> range:
    return range(vocab_size // 2, vocab_size)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


PositiveInt = Annotated[int, Field(ge=1)]
Seed = Annotated[int, Field(ge=0, lt=1 << 63)]


def _check_sizes(vocab_size: int, seq_len: int, num_pairs: int) -> None:
    """Raise ValueError unless one example of this shape can be generated."""
    # Keys and values are each drawn without replacement within an example.
    keys, values = len(key_tokens(vocab_size)), len(value_tokens(vocab_size))
    if num_pairs > min(keys, values):
        raise ValueError(
            f"num_pairs {num_pairs} needs distinct keys and values: vocab_size {vocab_size} "
            f"has {keys} key and {values} value tokens"
        )
    # Pairs take 2 * num_pairs tokens; each query takes a slot of two tokens after them.
    if seq_len < 4 * num_pairs:
        raise ValueError(
            f"seq_len {seq_len} is too short for {num_pairs} pairs: it needs at least "
            f"4 * num_pairs = {4 * num_pairs} tokens (the pairs, then a query slot each)"
        )


class MQARSplit(_Strict):
    """One generated block: num_examples sequences of seq_len tokens, num_pairs pairs each."""

    vocab_size: Annotated[int, Field(ge=4)]
    seq_len: PositiveInt
    num_pairs: PositiveInt
    num_examples: PositiveInt
    power_a: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.01
    # Zoology's random_non_queries: filler tokens are random instead of 0.
    random_non_queries: bool = True
    seed: Seed = 0

    @model_validator(mode="after")
    def _fits(self) -> MQARSplit:
        _check_sizes(self.vocab_size, self.seq_len, self.num_pairs)
        return self


class MQARSlice(_Strict):
    """One part of the train or test set; test slices may be longer than the training ones."""

    seq_len: PositiveInt
    num_pairs: PositiveInt
    num_examples: PositiveInt


def slice_key(num_pairs: int, seq_len: int) -> str:
    """The name of a test slice in the metrics (JSON-friendly, sorts by pairs)."""
    return f"num_pairs={num_pairs},seq_len={seq_len}"


def derive_seed(seed: int, split: Literal["train", "test"], index: int) -> int:
    """The seed of slice `index` of a split: train seeds lie in [0, 2^31), test seeds in
    [2^31, 2^32), so a train and a test slice never share a seed (Zoology's rule)."""
    digest = hashlib.sha256(f"mcgen.mqar:{seed}:{split}:{index}".encode()).digest()
    low = int.from_bytes(digest[:4], "little") & 0x7FFF_FFFF
    return low | (0x8000_0000 if split == "test" else 0)


class MQARDataConfig(_Strict):
    vocab_size: Annotated[int, Field(ge=4)] = 8192
    power_a: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.01
    random_non_queries: bool = True
    seed: Seed = 0
    train: Annotated[list[MQARSlice], Field(min_length=1)]
    test: Annotated[list[MQARSlice], Field(min_length=1)]

    @model_validator(mode="after")
    def _check(self) -> MQARDataConfig:
        for part in (self.train, self.test):
            for piece in part:
                _check_sizes(self.vocab_size, piece.seq_len, piece.num_pairs)
        # Metrics are keyed by (num_pairs, seq_len): two test slices must not share a key.
        keys = [slice_key(s.num_pairs, s.seq_len) for s in self.test]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"test slices repeat (num_pairs, seq_len): {', '.join(duplicates)}")
        return self

    def splits(self, which: Literal["train", "test"]) -> list[MQARSplit]:
        """The generator's config of every slice of one split, each with its own seed."""
        part = self.train if which == "train" else self.test
        return [
            MQARSplit(
                vocab_size=self.vocab_size,
                seq_len=piece.seq_len,
                num_pairs=piece.num_pairs,
                num_examples=piece.num_examples,
                power_a=self.power_a,
                random_non_queries=self.random_non_queries,
                seed=derive_seed(self.seed, which, index),
            )
            for index, piece in enumerate(part)
        ]


class Plateau(_Strict):
    """The stop rule "accuracy stopped rising": at an evaluation at step s >= min_steps,
    stop if no evaluation in the last `window` steps beat the best one before them by
    more than min_gain. A long window keeps a run that sits at chance before it learns
    (MQAR often does) from being stopped on that first flat stretch."""

    window: PositiveInt
    min_gain: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.01
    min_steps: Annotated[int, Field(ge=0)] = 0


class TrainConfig(_Strict):
    """The model's size and the optimiser's schedule; give epochs or max_steps, not both."""

    d_model: PositiveInt = 64
    layers: PositiveInt = 2
    lr: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.1
    epochs: PositiveInt | None = None
    max_steps: PositiveInt | None = None
    batch_size: PositiveInt = 64
    warmup: Annotated[int, Field(ge=0)] = 0  # steps of linear warmup before the cosine decay
    early_stop_accuracy: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.99
    # Evaluate every this many steps; None: at the end of every epoch. Always at the end.
    eval_every: PositiveInt | None = None
    grad_clip: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = 1.0
    seed: Seed = 0
    plateau: Plateau | None = None  # stop once accuracy stopped rising (None: never)

    @model_validator(mode="after")
    def _one_length(self) -> TrainConfig:
        if (self.epochs is None) == (self.max_steps is None):
            raise ValueError("give exactly one of epochs and max_steps")
        return self
