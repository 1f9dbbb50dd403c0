"""Score one candidate spec on MQAR: build its package, train at each learning rate of
the space, keep the best accuracy; its cost comes from the cost model (or, for
gpu_latency_ms, from timing the layer on a CUDA GPU)."""

from __future__ import annotations

import statistics
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
# Costs measured rather than modelled.
MEASURED_COSTS = frozenset({"gpu_latency_ms"})


class CostUnavailable(RuntimeError):
    """The space's cost cannot be measured here (gpu_latency_ms without a CUDA GPU)."""


def require_cost(space: SearchSpace) -> None:
    """Raise CostUnavailable, with what to do instead, if the cost cannot be measured here."""
    if space.objectives.cost == "gpu_latency_ms" and not torch.cuda.is_available():
        raise CostUnavailable(
            "objectives.cost gpu_latency_ms times the generated layer's forward pass on a "
            f"CUDA GPU, and torch {torch.__version__} sees none here "
            "(torch.cuda.is_available() is False): run the search on a machine with a GPU, "
            "or choose cost decode_state_bytes or train_flops_per_token"
        )


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


def model_cost(spec_text: str, space: SearchSpace, key: str) -> float:
    """A cost-model quantity (a key of COST_KEYS) of a spec, for the whole model (every
    layer) at the test length."""
    spec = parse_spec(spec_text)
    cost = compile_spec(spec, seq_len=eval_length(space)).after.graph["cost"]
    return float(cost[COST_KEYS[key]]) * space.train.layers


def spec_cost(spec_text: str, space: SearchSpace) -> float:
    """The space's cost objective of a spec from the cost model, whole model, test length
    (measured costs need the built layer: see evaluate)."""
    if space.objectives.cost in MEASURED_COSTS:
        raise ValueError(f"{space.objectives.cost} is measured, not modelled: see evaluate")
    return model_cost(spec_text, space, space.objectives.cost)


def attention_model_cost(space: SearchSpace, key: str, d_model: int | None = None) -> float:
    """A cost-model quantity of the softmax-attention baseline, whole model, test length."""
    spec = parse_spec(yaml.safe_dump(base_rnn_spec(space, d_model=d_model), sort_keys=False))
    memory = spec.memory
    cost = attention_cost(memory.heads, memory.key_dim, memory.value_dim, eval_length(space))
    return float(cost[COST_KEYS[key]]) * space.train.layers


def layer_latency_ms(
    factory: MixerFactory, d_model: int, space: SearchSpace, *, repeats: int = 20
) -> float:
    """Median forward time of one mixer layer on CUDA (batch of train.batch_size at the
    test length), times the number of layers: the gpu_latency_ms cost."""
    if not torch.cuda.is_available():
        raise CostUnavailable("timing a layer for gpu_latency_ms needs a CUDA GPU; torch sees none")
    device = torch.device("cuda")
    torch.manual_seed(space.train.seed)
    layer = factory(0).to(device).eval()
    x = torch.randn(space.train.batch_size, eval_length(space), d_model, device=device)
    times = []
    with torch.no_grad():
        for _ in range(3):  # warm up: compilation, autotuning, allocator
            layer(x)
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            layer(x)
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
    return statistics.median(times) * space.train.layers


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
    factory = mcgen_mixer(built.path)
    if space.objectives.cost in MEASURED_COSTS:
        require_cost(space)  # before training: fail fast
        cost = layer_latency_ms(factory, d_model, space)
    else:
        cost = spec_cost(text, space)
    with _one_thread():
        accuracy, per_slice, lr, by_lr = _train_each_lr(space, d_model, factory, data_cache)
    return Evaluation(accuracy, per_slice, cost, lr, text, by_lr)


def base_rnn_spec(space: SearchSpace, *, d_model: int | None = None) -> dict:
    """The space's spec without caching (aggregation none, one segment): the base RNN of
    the same width, a reference point every cached variant should beat. d_model: the
    width (default: the base's, or the first choice of a varied width)."""
    mapping = first_choice(space)
    mapping["aggregation"] = {"kind": "none"}
    mapping.setdefault("cache", {})["segments"] = {"kind": "none"}
    name = f"{space.name}_base"
    if d_model is not None:
        mapping.setdefault("layer", {})["d_model"] = d_model
        if d_model != first_choice(space).get("layer", {}).get("d_model"):
            name = f"{name}_{d_model}"
    return finish_spec(mapping, space, name=name)


def attention_baseline(
    space: SearchSpace,
    workdir: str | Path,
    *,
    data_cache: Path | None = None,
    d_model: int | None = None,
) -> Evaluation:
    """Softmax attention of the base spec's width and heads, trained like the candidates;
    its cost is the key/value cache (decode) or attention FLOPs at the test length, or
    its measured forward time (gpu_latency_ms)."""
    del workdir  # nothing is built; kept for the same signature as evaluate
    spec = parse_spec(yaml.safe_dump(base_rnn_spec(space, d_model=d_model), sort_keys=False))
    width, memory = spec.layer.d_model, spec.memory
    factory = attention_mixer(width, memory.heads)
    if space.objectives.cost in MEASURED_COSTS:
        require_cost(space)
        value = layer_latency_ms(factory, width, space)
    else:
        value = attention_model_cost(space, space.objectives.cost, d_model)
    with _one_thread():
        accuracy, per_slice, lr, by_lr = _train_each_lr(space, width, factory, data_cache)
    return Evaluation(accuracy, per_slice, value, lr, "", by_lr)
