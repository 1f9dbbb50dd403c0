"""Score one candidate spec on MQAR: build its package, train at each learning rate of
the space, keep the best accuracy; its cost comes from the cost model."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from mcgen.build import build
from mcgen.mqar.config import TrainConfig
from mcgen.mqar.data import MQARData, load_data
from mcgen.mqar.model import MixerFactory, MQARModel, attention_mixer, mcgen_mixer
from mcgen.mqar.train import train
from mcgen.passes.cost import attention_cost
from mcgen.passes.pipeline import compile_spec
from mcgen.search.space import SearchSpace, finish_spec, first_choice
from mcgen.spec import parse_spec

# The objective's cost name -> the key of the cost model's summary (graph["cost"]).
COST_KEYS = {"decode_state_bytes": "decode_state_bytes", "train_flops_per_token": "flops_per_token"}


@dataclass(frozen=True)
class Evaluation:
    accuracy: float  # the best over learning rates (each run's best evaluation)
    per_slice: dict[str, float]  # of the run that scored it
    cost: float  # the space's cost objective, whole model (every layer), at the test length
    best_lr: float
    spec_text: str  # the YAML that was built ("" for the attention baseline)
    by_lr: dict[float, float] = field(default_factory=dict)  # accuracy per learning rate


@contextmanager
def _one_thread() -> Iterator[None]:
    # Tiny models on a few cores run far faster on one thread than on several.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def eval_length(space: SearchSpace) -> int:
    return max(piece.seq_len for piece in space.mqar.test)


def _data(space: SearchSpace, cache_dir: Path | None) -> tuple[list[MQARData], list[MQARData]]:
    return load_data(space.mqar, cache_dir, cache=cache_dir is not None)


def _train_each_lr(
    space: SearchSpace, d_model: int, factory: MixerFactory, data_cache: Path | None
) -> tuple[float, dict[str, float], float, dict[float, float]]:
    train_data, test_data = _data(space, data_cache)
    settings = space.train
    best: tuple[float, dict[str, float], float] | None = None
    by_lr: dict[float, float] = {}
    for lr in settings.learning_rates:
        config = TrainConfig(
            d_model=d_model,
            layers=settings.layers,
            lr=lr,
            weight_decay=settings.weight_decay,
            max_steps=settings.steps,
            batch_size=settings.batch_size,
            warmup=settings.warmup,
            eval_every=settings.eval_every,
            seed=settings.seed,
        )
        torch.manual_seed(settings.seed)  # the same initialisation at every learning rate
        model = MQARModel(space.mqar.vocab_size, d_model, settings.layers, factory)
        result = train(model, train_data, test_data, config, progress=False)
        accuracy = 0.0 if result.diverged else result.best_accuracy
        by_lr[lr] = accuracy
        if best is None or accuracy > best[0]:
            best = (accuracy, dict(result.best_slice_accuracy), lr)
    assert best is not None  # learning_rates is never empty
    return best[0], best[1], best[2], by_lr


def spec_cost(spec_text: str, space: SearchSpace) -> float:
    """The space's cost objective of a spec, for the whole model at the test length."""
    spec = parse_spec(spec_text)
    cost = compile_spec(spec, seq_len=eval_length(space)).after.graph["cost"]
    return float(cost[COST_KEYS[space.objectives.cost]]) * space.train.layers


def evaluate(
    spec_mapping: dict,
    space: SearchSpace,
    workdir: str | Path,
    *,
    data_cache: Path | None = None,
) -> Evaluation:
    """Build the spec's package under workdir, train it at every learning rate of the
    space and score it. data_cache: where generated MQAR data is kept (None: not kept)."""
    workdir = Path(workdir)
    text = yaml.safe_dump(spec_mapping, sort_keys=False)
    spec_dir = workdir / "specs"
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec_path = spec_dir / f"{spec_mapping['name']}.yaml"
    spec_path.write_text(text, encoding="utf-8")
    built = build(spec_path, workdir / "generated")
    d_model = built.spec.layer.d_model
    with _one_thread():
        accuracy, per_slice, lr, by_lr = _train_each_lr(
            space, d_model, mcgen_mixer(built.path), data_cache
        )
    return Evaluation(accuracy, per_slice, spec_cost(text, space), lr, text, by_lr)


def base_rnn_spec(space: SearchSpace) -> dict:
    """The space's spec without caching (aggregation none, one segment): the base RNN of
    the same width, a reference point every cached variant should beat."""
    mapping = first_choice(space)
    mapping["aggregation"] = {"kind": "none"}
    mapping.setdefault("cache", {})["segments"] = {"kind": "none"}
    return finish_spec(mapping, space, name=f"{space.name}_base")


def attention_baseline(
    space: SearchSpace, workdir: str | Path, *, data_cache: Path | None = None
) -> Evaluation:
    """Softmax attention of the base spec's width and heads, trained like the candidates;
    its cost is the key/value cache (decode) or attention FLOPs at the test length."""
    del workdir  # nothing is built; kept for the same signature as evaluate
    spec = parse_spec(yaml.safe_dump(base_rnn_spec(space), sort_keys=False))
    d_model, memory = spec.layer.d_model, spec.memory
    with _one_thread():
        accuracy, per_slice, lr, by_lr = _train_each_lr(
            space, d_model, attention_mixer(d_model, memory.heads), data_cache
        )
    cost = attention_cost(memory.heads, memory.key_dim, memory.value_dim, eval_length(space))
    value = float(cost[COST_KEYS[space.objectives.cost]]) * space.train.layers
    return Evaluation(accuracy, per_slice, value, lr, "", by_lr)
