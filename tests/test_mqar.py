"""MQAR: the generator's invariants and cache, the model, the trainer (tiny sizes)."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from spec_helpers import spec_text

import mcgen.mqar.data as mqar_data
import mcgen.mqar.train as mqar_train
from mcgen.build import build
from mcgen.mqar.config import (
    IGNORE_INDEX,
    MQARDataConfig,
    MQARSlice,
    MQARSplit,
    Plateau,
    TrainConfig,
    derive_seed,
    slice_key,
)
from mcgen.mqar.data import cache_path, default_cache_dir, generate, load_data, load_split
from mcgen.mqar.model import MQARModel, attention_mixer, mcgen_mixer
from mcgen.mqar.train import Evaluation, evaluate, plateaued, train


def split(**fields) -> MQARSplit:
    defaults = dict(vocab_size=64, seq_len=48, num_pairs=6, num_examples=200, seed=3)
    return MQARSplit(**{**defaults, **fields})


@pytest.fixture
def loaded_machine(monkeypatch):
    """A busy machine, made certain: each reading of the trainer's clock is 100 s after the last.

    What training does must not depend on how long it took; only its reported time may change.
    """
    readings = itertools.count(step=100.0)
    monkeypatch.setattr(mqar_train, "time", SimpleNamespace(perf_counter=lambda: next(readings)))


# --- the generator -------------------------------------------------------------------


@pytest.mark.parametrize("noise", [False, True])
def test_layout_keys_values_queries_labels(noise):
    s = split(random_non_queries=noise)
    d = generate(s)
    inputs, labels = d.inputs.numpy(), d.labels.numpy()
    assert inputs.shape == labels.shape == (s.num_examples, s.seq_len)
    assert inputs.dtype == labels.dtype == np.int64
    half, pairs = s.vocab_size // 2, s.num_pairs
    keys, values = inputs[:, 0 : 2 * pairs : 2], inputs[:, 1 : 2 * pairs : 2]
    # Keys from [1, V/2), values from [V/2, V): disjoint halves, token 0 never used.
    assert keys.min() >= 1 and keys.max() < half
    assert values.min() >= half and values.max() < s.vocab_size
    for row in range(s.num_examples):
        assert len(set(keys[row])) == pairs and len(set(values[row])) == pairs
        paired = dict(zip(keys[row].tolist(), values[row].tolist(), strict=True))
        asked = np.flatnonzero(labels[row] != IGNORE_INDEX)
        # Exactly one query per key, all after the pairs, each labelled with its value.
        assert len(asked) == pairs
        assert asked.min() >= 2 * pairs
        assert sorted(inputs[row, asked].tolist()) == sorted(paired)
        for position in asked:
            assert labels[row, position] == paired[int(inputs[row, position])]
        # Queries open the two-token slots after the pairs.
        assert np.all((asked - 2 * pairs) % 2 == 0)
        if not noise:
            after = inputs[row, 2 * pairs :]
            assert sorted(np.flatnonzero(after) + 2 * pairs) == sorted(asked)
    assert (labels[:, : 2 * pairs] == IGNORE_INDEX).all()
    if noise:
        assert (inputs > 0).all()  # fillers are random tokens from [1, V)


def test_power_law_favours_short_gaps():
    s = split(seq_len=136, num_pairs=4, num_examples=3000)  # 64 slots for 4 queries
    labels = generate(s).labels.numpy()
    rows, positions = np.nonzero(labels != IGNORE_INDEX)
    gaps = (positions - 2 * s.num_pairs) // 2
    counts = np.bincount(gaps, minlength=64)
    assert counts[:16].sum() > 2 * counts[48:].sum()
    assert counts[0] > counts[63]
    # power_a = 1 is uniform: no such skew.
    flat = generate(split(seq_len=136, num_pairs=4, num_examples=3000, power_a=1.0))
    flat_gaps = (np.nonzero(flat.labels.numpy() != IGNORE_INDEX)[1] - 8) // 2
    flat_counts = np.bincount(flat_gaps, minlength=64)
    assert 0.7 < flat_counts[:16].sum() / flat_counts[48:].sum() < 1.4


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = generate(split()), generate(split()), generate(split(seed=4))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, c.inputs)


def test_train_and_test_seeds_are_disjoint():
    same = MQARSlice(seq_len=32, num_pairs=4, num_examples=64)
    config = MQARDataConfig(vocab_size=64, seed=7, train=[same, same], test=[same])
    train_seeds = [s.seed for s in config.splits("train")]
    test_seeds = [s.seed for s in config.splits("test")]
    assert len(set(train_seeds)) == 2 and not set(train_seeds) & set(test_seeds)
    for seed in range(50):
        assert derive_seed(seed, "train", 0) < 2**31 <= derive_seed(seed, "test", 0) < 2**32
    train_data, test_data = load_data(config, cache=False)
    assert not torch.equal(train_data[0].inputs, test_data[0].inputs)
    assert not torch.equal(train_data[0].inputs, train_data[1].inputs)
    # The config seed moves every split.
    other = MQARDataConfig(vocab_size=64, seed=8, train=[same], test=[same])
    assert other.splits("test")[0].seed != config.splits("test")[0].seed


def test_longer_test_slices_have_their_length():
    config = MQARDataConfig(
        vocab_size=64,
        train=[MQARSlice(seq_len=32, num_pairs=4, num_examples=16)],
        test=[
            MQARSlice(seq_len=32, num_pairs=4, num_examples=8),
            MQARSlice(seq_len=128, num_pairs=16, num_examples=8),
        ],
    )
    train_data, test_data = load_data(config, cache=False)
    assert train_data[0].inputs.shape == (16, 32)
    assert [tuple(d.inputs.shape) for d in test_data] == [(8, 32), (8, 128)]
    assert [d.key for d in test_data] == [slice_key(4, 32), slice_key(16, 128)]
    counts = (test_data[1].labels != IGNORE_INDEX).sum(dim=1)
    assert (counts == 16).all()


def test_cache_hit_reuses_the_file(tmp_path, monkeypatch):
    s = split()
    first = load_split(s, tmp_path)
    path = cache_path(s, tmp_path)
    assert path.is_file() and path.parent == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left over

    def no_generation(_split):
        raise AssertionError("regenerated a cached split")

    monkeypatch.setattr(mqar_data, "generate", no_generation)
    again = load_split(s, tmp_path)
    assert torch.equal(first.inputs, again.inputs) and torch.equal(first.labels, again.labels)
    # Another config is another file: it must generate (and here, fail).
    with pytest.raises(AssertionError, match="regenerated"):
        load_split(split(seed=5), tmp_path)


def test_cache_dir_and_key(tmp_path, monkeypatch):
    monkeypatch.setenv("MCGEN_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "mqar"
    monkeypatch.delenv("MCGEN_CACHE")
    assert default_cache_dir().parts[-3:] == (".cache", "mcgen", "mqar")
    assert cache_path(split(), tmp_path) == cache_path(split(), tmp_path)
    assert cache_path(split(), tmp_path) != cache_path(split(num_examples=201), tmp_path)
    assert len(cache_path(split(), tmp_path).stem) == len("mqar-") + 64  # a sha256


def test_a_damaged_cache_file_is_regenerated(tmp_path):
    s = split()
    path = cache_path(s, tmp_path)
    path.write_bytes(b"not an npz")
    data = load_split(s, tmp_path)
    assert torch.equal(data.inputs, generate(s).inputs)
    assert load_split(s, tmp_path).inputs.shape == (s.num_examples, s.seq_len)


def test_configs_are_strict():
    with pytest.raises(ValidationError):
        split(seq_len="48")
    with pytest.raises(ValidationError):
        MQARSlice(seq_len=32, num_pairs=4, num_examples=8, extra=1)
    with pytest.raises(ValidationError, match="too short"):
        split(seq_len=20)  # 6 pairs need 24 tokens
    with pytest.raises(ValidationError, match="distinct keys"):
        split(vocab_size=8)
    piece = MQARSlice(seq_len=32, num_pairs=4, num_examples=8)
    with pytest.raises(ValidationError, match="repeat"):
        MQARDataConfig(vocab_size=64, train=[piece], test=[piece, piece])
    with pytest.raises(ValidationError, match="exactly one"):
        TrainConfig()
    with pytest.raises(ValidationError, match="exactly one"):
        TrainConfig(epochs=1, max_steps=10)
    assert TrainConfig(epochs=1).early_stop_accuracy == 0.99


# --- the model -----------------------------------------------------------------------


def test_model_shapes_tied_weights_and_causality():
    torch.manual_seed(0)
    model = MQARModel(64, 32, 2, attention_mixer(32, 4))
    inputs = torch.randint(0, 64, (3, 20))
    logits = model(inputs)
    assert logits.shape == (3, 20, 64)
    assert model.head.weight is model.embedding.weight
    assert sum(p is model.embedding.weight for p in model.parameters()) == 1
    where = torch.zeros(3, 20, dtype=torch.bool)
    where[0, 5] = where[2, 19] = True
    assert torch.allclose(model(inputs, where), logits[where], atol=1e-5)
    # A later token never changes an earlier position's logits.
    changed = inputs.clone()
    changed[:, 12] = (changed[:, 12] + 1) % 64
    assert torch.allclose(model(changed)[:, :12], logits[:, :12], atol=1e-5)
    assert not torch.allclose(model(changed)[:, 12:], logits[:, 12:], atol=1e-5)


# --- training ------------------------------------------------------------------------


def tiny_data(train_examples: int = 64):
    config = MQARDataConfig(
        vocab_size=64,
        train=[MQARSlice(seq_len=32, num_pairs=4, num_examples=train_examples)],
        test=[
            MQARSlice(seq_len=32, num_pairs=4, num_examples=64),
            MQARSlice(seq_len=64, num_pairs=8, num_examples=32),
        ],
    )
    return load_data(config, cache=False)


def test_training_is_reproducible_and_reports_per_slice(one_thread, capsys):
    train_data, test_data = tiny_data()
    config = TrainConfig(d_model=32, layers=1, max_steps=6, batch_size=16, eval_every=3)
    runs = []
    for _ in range(2):
        torch.manual_seed(config.seed)
        model = MQARModel(64, config.d_model, config.layers, attention_mixer(32, 2))
        runs.append(train(model, train_data, test_data, config, progress=True))
    first, second = runs
    assert [h.loss for h in first.history] == [h.loss for h in second.history]
    assert first.slice_accuracy == second.slice_accuracy
    assert first.steps == 6 and [h.step for h in first.history] == [3, 6]
    assert set(first.slice_accuracy) == {slice_key(4, 32), slice_key(8, 64)}
    assert first.best_accuracy == max(h.accuracy for h in first.history)
    assert not first.stopped_early and not first.diverged and first.seconds > 0
    # Not a terminal here: plain lines, one per evaluation.
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train step")]
    assert len(lines) == 4 and lines[0].startswith("train step 3/6")
    overall, per_slice = evaluate(model, test_data, 16)
    assert overall == first.accuracy and per_slice == first.slice_accuracy


def test_epochs_and_early_stop(one_thread, monkeypatch):
    train_data, test_data = tiny_data()
    torch.manual_seed(0)
    model = MQARModel(64, 32, 1, attention_mixer(32, 2))
    # 64 examples in batches of 16: 4 steps an epoch, an evaluation after each.
    config = TrainConfig(epochs=3, batch_size=16)
    result = train(model, train_data, test_data, config, progress=False)
    assert result.steps == 12 and [h.step for h in result.history] == [4, 8, 12]
    assert not result.stopped_early
    # The second evaluation reports the target accuracy: training stops there.
    reports = iter([0.5, 0.99, 0.2])
    monkeypatch.setattr(mqar_train, "evaluate", lambda *_: (next(reports), {"s": 0.0}))
    result = train(model, train_data, test_data, config, progress=False)
    assert result.stopped_early and result.steps == 8
    assert result.best_accuracy == result.accuracy == 0.99 and result.best_step == 8


def _history(*accuracies: float, every: int = 100) -> list[Evaluation]:
    return [Evaluation((i + 1) * every, 1.0, a, {}) for i, a in enumerate(accuracies)]


def test_the_plateau_rule():
    rule = Plateau(window=200, min_gain=0.01)
    # Rising by more than min_gain within the last 200 steps: not flat.
    assert not plateaued(_history(0.1, 0.2, 0.3), rule)
    # No gain above 0.01 over the best before the window: flat.
    assert plateaued(_history(0.1, 0.30, 0.305, 0.31), rule)
    # A fall is flat too; too early (no evaluation before the window) is not.
    assert plateaued(_history(0.5, 0.4, 0.3), rule)
    assert not plateaued(_history(0.5, 0.5), rule)
    # min_steps: a run at chance is not stopped before it.
    assert not plateaued(_history(0.0, 0.0, 0.0), Plateau(window=100, min_steps=400))
    assert plateaued(_history(0.0, 0.0, 0.0, 0.0), Plateau(window=100, min_steps=400))


def test_training_stops_once_accuracy_stopped_rising(one_thread, monkeypatch):
    train_data, test_data = tiny_data()
    torch.manual_seed(0)
    model = MQARModel(64, 32, 1, attention_mixer(32, 2))
    config = TrainConfig(
        max_steps=40, batch_size=16, eval_every=4, plateau=Plateau(window=8, min_gain=0.05)
    )
    reports = iter([0.1, 0.3, 0.5, 0.52, 0.53, 0.9, 0.9])
    monkeypatch.setattr(mqar_train, "evaluate", lambda *_: (next(reports), {"s": 0.0}))
    result = train(model, train_data, test_data, config, progress=False)
    # At step 20 the last 8 steps (0.52, 0.53) beat 0.5 by at most 0.03 < 0.05: stop.
    assert result.stop_reason == "plateau" and result.steps == 20
    assert not result.stopped_early and result.best_accuracy == 0.53
    monkeypatch.setattr(mqar_train, "evaluate", lambda *_: (0.2, {"s": 0.0}))
    result = train(
        model, train_data, test_data, config.model_copy(update={"plateau": None}), progress=False
    )
    assert result.stop_reason == "budget" and result.steps == 40


def test_a_run_whose_loss_goes_nan_stops_at_the_next_evaluation(one_thread):
    train_data, test_data = tiny_data()
    torch.manual_seed(0)
    model = MQARModel(64, 32, 1, attention_mixer(32, 2))
    training_steps = itertools.count(1)

    def nan_from_step_5(module, inputs, output):
        if module.training and next(training_steps) >= 5:
            return output * math.nan
        return output

    model.register_forward_hook(nan_from_step_5)
    # The plateau rule would stop it at step 6 too: a run that diverged is not paused.
    config = TrainConfig(
        max_steps=40, batch_size=16, eval_every=3, plateau=Plateau(window=3, min_gain=0.5)
    )
    result = train(model, train_data, test_data, config, progress=False)
    # Steps 1-3 are finite; step 5's loss makes the mean over steps 4-6 NaN.
    assert result.diverged and result.stop_reason == "diverged" and result.steps == 6
    assert math.isfinite(result.history[0].loss) and math.isnan(result.history[1].loss)
    assert result.paused is None  # nothing for a later run to go on from


@pytest.mark.parametrize(
    ("eval_every", "stop_at"), [(3, 6), (4, 8)], ids=["mid-epoch", "at-an-epoch-end"]
)
def test_a_run_the_plateau_stopped_goes_on_as_if_it_had_not_stopped(
    one_thread, eval_every, stop_at
):
    train_data, test_data = tiny_data()  # 64 examples: 4 batches of 16 an epoch
    budget = TrainConfig(max_steps=24, batch_size=16, eval_every=eval_every, warmup=4)
    # min_gain 1: the rule stops at its first chance, step 2 * eval_every.
    rule = Plateau(window=eval_every, min_gain=1.0, min_steps=stop_at)

    def fresh() -> MQARModel:
        torch.manual_seed(0)
        return MQARModel(64, 32, 1, attention_mixer(32, 2))

    whole = fresh()
    straight = train(whole, train_data, test_data, budget, progress=False)
    stopped = train(fresh(), train_data, test_data, budget.model_copy(update={"plateau": rule}),
                    progress=False)  # fmt: skip
    assert stopped.stop_reason == "plateau" and stopped.steps == stop_at
    assert stopped.paused is not None and straight.paused is None
    resumed_model = fresh()
    resumed = train(resumed_model, train_data, test_data, budget, progress=False,
                    resume=stopped.paused)  # fmt: skip
    assert resumed.steps == 24 and resumed.stop_reason == "budget"
    assert resumed.history == straight.history  # every loss and accuracy, to the bit
    for a, b in zip(whole.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_generated_package_as_the_mixer(tmp_path, one_thread):
    spec_path = tmp_path / "mqar_tiny.yaml"
    spec_path.write_text(spec_text(name="mqar_tiny", d_model=32), encoding="utf-8")
    built = build(spec_path, tmp_path / "generated")
    factory = mcgen_mixer(built.path, d_model=32)
    torch.manual_seed(0)
    model = MQARModel(64, 32, 2, factory)
    assert type(model.blocks[1].mixer[1]).__name__ == "MCLayer"
    assert model.blocks[1].mixer[1].layer_idx == 1
    train_data, test_data = tiny_data()
    config = TrainConfig(d_model=32, layers=2, max_steps=4, batch_size=16, lr=3e-3)
    result = train(model, train_data, test_data, config, progress=False)
    assert result.steps == 4 and not result.diverged
    assert all(math.isfinite(h.loss) for h in result.history)
    assert 0.0 <= result.accuracy <= 1.0
    bare = MQARModel(64, 32, 1, mcgen_mixer(built.path, short_conv=0))
    assert type(bare.blocks[0].mixer).__name__ == "MCLayer"


@pytest.mark.slow
def test_attention_learns_tiny_mqar(one_thread, loaded_machine):
    config = MQARDataConfig(
        vocab_size=64,
        train=[MQARSlice(seq_len=32, num_pairs=4, num_examples=4000)],
        test=[
            MQARSlice(seq_len=32, num_pairs=4, num_examples=256),
            MQARSlice(seq_len=64, num_pairs=4, num_examples=256),
        ],
    )
    train_data, test_data = load_data(config, cache=False)
    settings = TrainConfig(
        d_model=64, layers=2, lr=3e-3, max_steps=500, batch_size=32, warmup=20, eval_every=100
    )
    torch.manual_seed(settings.seed)
    model = MQARModel(64, settings.d_model, settings.layers, attention_mixer(64, 4))
    result = train(model, train_data, test_data, settings, progress=False)
    # Chance is 1 / 32 (the value half of the vocabulary); 1 / 4 is guessing among the
    # values present. Recall means well above both.
    assert result.best_accuracy > 0.5, result.history
    assert result.best_slice_accuracy[slice_key(4, 32)] > 0.5
    # It trained the steps it was given, or stopped at the target accuracy: never on a clock.
    assert result.stopped_early or result.steps == settings.max_steps
    assert result.history[-1].step == result.steps
