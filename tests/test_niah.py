"""The needle-in-a-haystack probe: the generator's invariants, a model that cannot see
the needle scores chance, attention finds it (tiny sizes)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from mcgen.mqar.config import IGNORE_INDEX, TrainConfig, value_tokens
from mcgen.mqar.model import MQARModel, attention_mixer
from mcgen.mqar.train import train
from mcgen.niah.config import NIAHDataConfig, NIAHSlice, NIAHSplit, slice_key
from mcgen.niah.data import generate, load_data


def split(**fields) -> NIAHSplit:
    defaults = dict(vocab_size=32, seq_len=40, num_examples=300, value_len=1, seed=5)
    return NIAHSplit(**{**defaults, **fields})


@pytest.mark.parametrize("value_len", [1, 3])
def test_exactly_one_needle_and_the_question_at_the_end(value_len):
    data = generate(split(value_len=value_len))
    half = 32 // 2
    inputs, labels = data.inputs, data.labels
    assert inputs.shape == labels.shape == (300, 40)
    is_key = (inputs >= 1) & (inputs < half)
    # The key twice (needle and question), no other key token anywhere.
    assert (is_key.sum(1) == 2).all()
    question = 40 - value_len
    rows = torch.arange(300)
    assert (inputs[:, question] == inputs[rows, data.needle_at]).all()
    assert is_key[rows, data.needle_at].all() and is_key[:, question].all()
    # Fillers and values come from the value half; the needle ends before the question.
    assert ((inputs >= half) | is_key).all() and (inputs < 32).all()
    assert (data.needle_at + value_len < question).all()
    # Labels: the value, on the question's last value_len positions, nowhere else.
    scored = labels != IGNORE_INDEX
    assert (scored.sum(1) == value_len).all() and scored[:, question:].all()
    value = inputs[rows[:, None], data.needle_at[:, None] + 1 + torch.arange(value_len)]
    assert torch.equal(labels[:, question:], value)
    # The question repeats all but the value's last token (each label is the next token).
    assert torch.equal(inputs[:, question + 1 :], value[:, :-1])


def test_the_needle_moves_over_the_whole_haystack():
    data = generate(split(num_examples=2000))
    assert int(data.needle_at.min()) == 0 and int(data.needle_at.max()) == 40 - 2 - 1


def test_same_seed_same_data_other_seed_other_data():
    assert torch.equal(generate(split()).inputs, generate(split()).inputs)
    assert not torch.equal(generate(split()).inputs, generate(split(seed=6)).inputs)


def test_slices_have_their_lengths_and_seeds_differ():
    config = NIAHDataConfig(
        vocab_size=32,
        train=[NIAHSlice(seq_len=32, num_examples=8)],
        test=[NIAHSlice(seq_len=32, num_examples=4), NIAHSlice(seq_len=128, num_examples=4)],
    )
    train_data, test_data = load_data(config)
    assert [d.inputs.shape for d in test_data] == [(4, 32), (4, 128)]
    assert [d.key for d in test_data] == config.test_keys() == [slice_key(32), slice_key(128)]
    seeds = [s.seed for s in config.splits("train") + config.splits("test")]
    assert len(set(seeds)) == 3
    # The same length in train and test is still other examples.
    assert not torch.equal(train_data[0].inputs[:4], test_data[0].inputs)


def test_configs_are_strict():
    with pytest.raises(ValidationError, match="too short for a needle of value_len 4"):
        split(seq_len=9, value_len=4)
    with pytest.raises(ValidationError, match="test slices repeat seq_len: 32"):
        NIAHDataConfig(
            train=[NIAHSlice(seq_len=32, num_examples=8)],
            test=[NIAHSlice(seq_len=32, num_examples=4), NIAHSlice(seq_len=32, num_examples=8)],
        )


def _blind(layer_idx: int) -> nn.Module:
    """A mixer that mixes nothing: every position sees only its own token."""
    return nn.Identity()


def test_a_model_that_cannot_see_the_needle_scores_chance(one_thread):
    config = NIAHDataConfig(
        vocab_size=64,
        train=[NIAHSlice(seq_len=24, num_examples=2048)],
        test=[NIAHSlice(seq_len=24, num_examples=1024)],
    )
    train_data, test_data = load_data(config)
    settings = TrainConfig(d_model=32, layers=1, lr=1e-2, max_steps=150, batch_size=64)
    torch.manual_seed(0)
    model = MQARModel(64, 32, 1, _blind)
    result = train(model, train_data, test_data, settings, progress=False)
    chance = 1 / len(value_tokens(64))  # 1/32
    # It learns that answers are value tokens, then can only guess among them: with
    # 1024 questions, 3x chance is far out of reach of a guess (sd about chance / 5.6).
    assert result.best_accuracy < 3 * chance, result.history


@pytest.mark.slow
def test_attention_finds_the_needle_on_a_tiny_run(one_thread):
    config = NIAHDataConfig(
        vocab_size=32,
        train=[NIAHSlice(seq_len=32, num_examples=4096)],
        test=[NIAHSlice(seq_len=32, num_examples=256), NIAHSlice(seq_len=64, num_examples=256)],
    )
    train_data, test_data = load_data(config)
    settings = TrainConfig(
        d_model=32, layers=2, lr=3e-3, max_steps=400, batch_size=32, warmup=20, eval_every=100
    )
    torch.manual_seed(0)
    model = MQARModel(32, 32, 2, attention_mixer(32, 2))
    result = train(model, train_data, test_data, settings, progress=False)
    # Chance is 1/16; finding the needle means far above it at the training length.
    assert result.best_slice_accuracy[slice_key(32)] > 0.8, result.history
