"""Score one candidate spec on the space's task (MQAR or the needle probe): build its
package, train it at each learning rate and seed of the space (a sweep widened until it
brackets the best rate), score it by the best rate's mean accuracy over seeds; its cost
comes from the cost model (or, for gpu_latency_ms, from timing the layer on a CUDA GPU).

Each (rate, seed) run is a unit: evaluate takes the runs already done (a resumed trial's)
and hands each new one to a callback as it ends, so a killed study redoes none of them."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import yaml

from mcgen.bench.results import cpu_name
from mcgen.build import build
from mcgen.mqar.config import TrainConfig, slice_key
from mcgen.mqar.data import generate as generate_mqar
from mcgen.mqar.data import load_data
from mcgen.mqar.model import MixerFactory, MQARModel, attention_mixer, mcgen_mixer
from mcgen.mqar.train import LabelledSplit, TrainResult, train
from mcgen.niah import data as niah_data
from mcgen.passes.cost import attention_cost
from mcgen.passes.pipeline import compile_spec
from mcgen.search.checkpoints import RunCheckpoints
from mcgen.search.space import SearchSpace, finish_spec, first_choice
from mcgen.spec import parse_spec

# The objective's cost name -> the key of the cost model's summary (graph["cost"]).
COST_KEYS = {"decode_state_bytes": "decode_state_bytes", "train_flops_per_token": "flops_per_token"}
# Costs measured rather than modelled.
MEASURED_COSTS = frozenset({"gpu_latency_ms"})


class HardwareUnavailable(RuntimeError):
    """The space asks for a GPU that torch does not see here (to train on, or to time
    gpu_latency_ms)."""


def train_device(space: SearchSpace) -> torch.device:
    """Where the space's runs train: train.device, with "auto" the GPU when there is one."""
    setting = space.train.device
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(setting)


def device_name(space: SearchSpace) -> str:
    """What a worker of the space trains its runs on, as reports name it: the GPU (which
    the study's workers share), or the CPU (each worker on one thread of it)."""
    device = train_device(space)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, one thread a worker"


def require_hardware(space: SearchSpace) -> None:
    """Raise HardwareUnavailable, with what to do instead, if the runs cannot train or the
    cost cannot be measured here."""
    if train_device(space).type == "cuda" and not torch.cuda.is_available():
        raise HardwareUnavailable(
            f"train.device cuda trains every run on a CUDA GPU, and torch {torch.__version__} "
            "sees none here (torch.cuda.is_available() is False): run the search on a "
            "machine with a GPU, or set train.device to cpu or auto"
        )
    if space.objectives.cost == "gpu_latency_ms" and not torch.cuda.is_available():
        raise HardwareUnavailable(
            "objectives.cost gpu_latency_ms times the generated layer's forward pass on a "
            f"CUDA GPU, and torch {torch.__version__} sees none here "
            "(torch.cuda.is_available() is False): run the search on a machine with a GPU, "
            "or choose cost decode_state_bytes or train_flops_per_token"
        )


@dataclass(frozen=True)
class Run:
    """One training run: a (learning rate, seed) unit of a candidate's score."""

    lr: float
    seed: int
    accuracy: float  # as scored: its best evaluation's, 0 if it diverged
    per_slice: dict[str, float]  # at that evaluation, as scored
    steps: int
    stop_reason: str  # budget | target | plateau | diverged
    curve: list[tuple[int, float]]  # (step, test accuracy) at every evaluation
    seconds: float
    eval_seconds: float = 0.0  # of seconds, evaluating
    # A final run: the best rate's seed trained on to the budget, no plateau rule
    # (train.full_budget_at_best); the sweep's runs are not.
    final: bool = False
    # What trained it (device_name; a run resumed on another machine: the one it ended
    # on); "" in journals written before runs kept it.
    device: str = ""

    @property
    def key(self) -> str:
        return final_key(self.lr, self.seed) if self.final else run_key(self.lr, self.seed)

    def to_json(self) -> dict:
        return {**asdict(self), "curve": [list(point) for point in self.curve]}

    @staticmethod
    def from_json(data: dict) -> Run:
        run = Run(**{**data, "curve": [(int(s), float(a)) for s, a in data["curve"]]})
        if run.stop_reason != "diverged":
            return run
        # Journals written before a diverged run scored 0 on each slice too kept its best
        # evaluation's slices beside its accuracy of 0.
        return replace(run, per_slice=dict.fromkeys(run.per_slice, 0.0))


def scored(result: TrainResult) -> tuple[float, dict[str, float]]:
    """What a run scores, overall and per test slice: its best evaluation, or 0 on each if
    its loss went NaN or infinite (a rate whose runs blow up must not win the sweep on what
    they reached before)."""
    if result.diverged:
        return 0.0, dict.fromkeys(result.best_slice_accuracy, 0.0)
    return result.best_accuracy, dict(result.best_slice_accuracy)


RUN_PREFIX = "run lr="
FINAL_PREFIX = "final lr="


def worker_seconds(trial_seconds: float, run_seconds: float) -> float:
    """What a complete trial cost one worker: its own seconds (build, runs, evaluations), or
    its runs' where it took them from another study (--reuse-runs) instead of training them."""
    return max(trial_seconds, run_seconds)


def run_key(lr: float, seed: int) -> str:
    """The name of a (learning rate, seed) unit, as a trial attribute stores it."""
    return f"{RUN_PREFIX}{lr!r} seed={seed}"


def final_key(lr: float, seed: int) -> str:
    """The name of a final run (the best rate's seed trained to the budget)."""
    return f"{FINAL_PREFIX}{lr!r} seed={seed}"


def runs_in(attrs: Mapping[str, object]) -> dict[str, dict]:
    """The runs among a trial's user attributes, the sweep's and the final ones: key -> JSON."""
    prefixes = (RUN_PREFIX, FINAL_PREFIX)
    return {k: v for k, v in attrs.items() if k.startswith(prefixes) and isinstance(v, dict)}


@dataclass(frozen=True)
class Evaluation:
    accuracy: float  # the best learning rate's mean over seeds
    per_slice: dict[str, float]  # its mean per test slice
    cost: float  # the space's cost objective, whole model (every layer), at the test length
    best_lr: float
    spec_text: str  # the YAML that was built ("" for the attention baseline)
    # mean accuracy per learning rate, over the sweep's runs (before any final run)
    by_lr: dict[float, float] = field(default_factory=dict)
    spread: float = 0.0  # the best rate's standard deviation over seeds (0 for one seed)
    # bracketed: the best rate has a worse one on each side; capped: still at an end when
    # the widenings ran out; fixed: a fixed list of rates, never widened.
    lr_status: str = "fixed"
    runs: list[Run] = field(default_factory=list)


# What a finished run is given to (the worker records it in the study): its key and JSON.
OnRun = Callable[[str, dict], None]


@contextmanager
def one_thread() -> Iterator[None]:
    # Tiny models on a few cores run far faster on one thread than on several.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def eval_length(space: SearchSpace) -> int:
    return max(piece.seq_len for piece in space.data.test)


def test_keys(space: SearchSpace) -> list[str]:
    """The names of the task's test slices, as the metrics key them."""
    if space.niah is not None:
        return space.niah.test_keys()
    return [slice_key(s.num_pairs, s.seq_len) for s in space.data.test]


def short_slice(key: str) -> str:
    """num_pairs=16,seq_len=128 -> P16 T128; seq_len=512 (the needle probe) -> T512."""
    parts = dict(item.split("=") for item in key.split(","))
    length = f"T{parts.get('seq_len', '?')}"
    return f"P{parts['num_pairs']} {length}" if "num_pairs" in parts else length


def load_task_data(
    space: SearchSpace, cache_dir: Path | None
) -> tuple[list[LabelledSplit], list[LabelledSplit]]:
    """(train, test) slices of the space's task (MQAR data cached in cache_dir if given)."""
    if space.niah is not None:
        return niah_data.load_data(space.niah)
    assert space.mqar is not None
    return load_data(space.mqar, cache_dir, cache=cache_dir is not None)


def evaluation_slices(space: SearchSpace) -> list[LabelledSplit]:
    """The task's test slices alone, generated (the same data the runs were scored on)."""
    generate = niah_data.generate if space.niah is not None else generate_mqar
    return [generate(split) for split in space.data.splits("test")]


def run_config(
    space: SearchSpace, d_model: int, lr: float, seed: int, *, final: bool = False
) -> TrainConfig:
    """The training of one run of the space: a final one trains to the budget, with no
    plateau rule."""
    settings = space.train
    return TrainConfig(
        d_model=d_model,
        layers=settings.layers,
        lr=lr,
        weight_decay=settings.weight_decay,
        max_steps=settings.steps,
        batch_size=settings.batch_size,
        warmup=settings.warmup,
        eval_every=settings.eval_every,
        plateau=None if final else settings.plateau,
        seed=seed,
    )


def new_model(space: SearchSpace, d_model: int, factory: MixerFactory, seed: int) -> MQARModel:
    """A run's model, initialised from its seed alone (the same at every learning rate),
    on the space's training device."""
    torch.manual_seed(seed)
    model = MQARModel(space.data.vocab_size, d_model, space.train.layers, factory)
    return model.to(train_device(space))


def _train_one(
    space: SearchSpace,
    d_model: int,
    factory: MixerFactory,
    data: tuple[list[LabelledSplit], list[LabelledSplit]],
    lr: float,
    seed: int,
    *,
    final: bool = False,
    states: RunCheckpoints | None = None,
    keep_paused: bool = False,
) -> Run:
    """One run; a final one trains to the budget, with no plateau rule. With `states`, the
    run goes on from where it stood at its last saved evaluation, saves where it stands
    after each one, and, with keep_paused, where the plateau rule stopped it: the final
    run of the same (rate, seed) goes on from there instead of training its first steps
    again."""
    config = run_config(space, d_model, lr, seed, final=final)
    model = new_model(space, d_model, factory, seed)
    key, sweep_key = (final_key if final else run_key)(lr, seed), run_key(lr, seed)
    resume, save = None, None
    if states is not None:
        resume = states.load(key) or (states.load(sweep_key) if final else None)
        save = states.saver(key)
    result = train(
        model, data[0], data[1], config, progress=False, resume=resume, on_evaluation=save
    )
    if states is not None:
        states.drop(key)
        if final:
            states.drop(sweep_key)
        elif keep_paused and result.paused is not None:
            states.save(key, result.paused)
    accuracy, per_slice = scored(result)
    return Run(
        lr=lr,
        seed=seed,
        accuracy=accuracy,
        per_slice=per_slice,
        steps=result.steps,
        stop_reason=result.stop_reason,
        curve=[(e.step, e.accuracy) for e in result.history],
        seconds=round(result.seconds, 2),
        eval_seconds=round(result.eval_seconds, 2),
        final=final,
        device=device_name(space),
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _best_rate(rates: list[float], means: dict[float, float]) -> tuple[float, str]:
    """(the best rate, where it sits: "inside", "low" or "high" end of the rates). Of
    rates tied for the best, an inside one if any (then it is bracketed), else the lowest."""
    top = max(means[lr] for lr in rates)
    tied = [lr for lr in rates if means[lr] == top]
    inside = [lr for lr in tied if lr not in (rates[0], rates[-1])]
    if inside:
        return inside[0], "inside"
    return tied[0], "low" if tied[0] == rates[0] else "high"


def sweep(
    space: SearchSpace,
    train_one: Callable[[float, int], Run],
    *,
    done_runs: Mapping[str, dict] | None = None,
    on_run: OnRun | None = None,
) -> tuple[list[Run], float, str]:
    """Train every (rate, seed) of the space's sweep, widening it past an end while the
    best mean sits there (space.train.lr_sweep). Runs in done_runs (key -> JSON) are
    taken as they are, not trained again; each new one is given to on_run as it ends.
    Returns (all runs, the best rate, its status: bracketed | capped | fixed)."""
    settings = space.train
    done = dict(done_runs or {})
    runs: dict[str, Run] = {}
    below = above = 0  # rates added under the sweep's low end and over its high end
    while True:
        sweep_ = settings.lr_sweep
        rates = settings.first_rates() if sweep_ is None else sweep_.rates(below, above)
        for lr in rates:
            for seed in settings.run_seeds():
                key = run_key(lr, seed)
                if key in runs:
                    continue
                if key in done:
                    runs[key] = Run.from_json(done[key])
                    continue
                runs[key] = train_one(lr, seed)
                if on_run is not None:
                    on_run(key, runs[key].to_json())
        means = {
            lr: _mean([runs[run_key(lr, seed)].accuracy for seed in settings.run_seeds()])
            for lr in rates
        }
        best, where = _best_rate(rates, means)
        if sweep_ is None:
            return list(runs.values()), best, "fixed"
        if where == "inside":
            return list(runs.values()), best, "bracketed"
        wider = sweep_.rate(-below - 1) if where == "low" else sweep_.rate(sweep_.points + above)
        if below + above >= sweep_.max_widenings or wider > 1:
            return list(runs.values()), best, "capped"
        below, above = below + (where == "low"), above + (where == "high")


def final_runs(
    space: SearchSpace,
    best_runs: list[Run],
    train_final: Callable[[float, int], Run],
    *,
    done_runs: Mapping[str, dict] | None = None,
    on_run: OnRun | None = None,
) -> list[Run]:
    """The best rate's runs the score is taken from: with train.full_budget_at_best, each
    run the plateau rule stopped is replaced by the same (rate, seed) trained to the
    budget (taken from done_runs when there, else trained and given to on_run); the
    others (at the budget, at the target, diverged) stand as they are."""
    if not space.train.full_budget_at_best:
        return best_runs
    done = done_runs or {}
    finals = []
    for run in best_runs:
        if run.stop_reason != "plateau":
            finals.append(run)
            continue
        key = final_key(run.lr, run.seed)
        if key in done:
            finals.append(Run.from_json(done[key]))
            continue
        final = train_final(run.lr, run.seed)
        if on_run is not None:
            on_run(key, final.to_json())
        finals.append(final)
    return finals


def _score(
    space: SearchSpace,
    d_model: int,
    factory: MixerFactory,
    cost: float,
    spec_text: str,
    data_cache: Path | None,
    done_runs: Mapping[str, dict] | None,
    on_run: OnRun | None,
    checkpoints: RunCheckpoints | None,
) -> Evaluation:
    """Train a model of this mixer over the space's sweep and seeds; its Evaluation."""
    data = load_task_data(space, data_cache)
    states = checkpoints or RunCheckpoints()  # in memory: for this process only
    # Where the plateau rule stopped a sweep run is kept for its final run to go on from.
    keep_paused = space.train.full_budget_at_best

    def train_one(lr: float, seed: int) -> Run:
        return _train_one(
            space, d_model, factory, data, lr, seed, states=states, keep_paused=keep_paused
        )

    def train_final(lr: float, seed: int) -> Run:
        return _train_one(space, d_model, factory, data, lr, seed, final=True, states=states)

    units = {"done_runs": done_runs, "on_run": on_run}
    with one_thread():
        runs, best, status = sweep(space, train_one, **units)
        by_lr: dict[float, list[Run]] = {}
        for run in runs:
            by_lr.setdefault(run.lr, []).append(run)
        best_runs = final_runs(space, by_lr[best], train_final, **units)
    states.clear()  # the other rates' paused runs: no final run goes on from them
    accuracies = [run.accuracy for run in best_runs]
    return Evaluation(
        accuracy=_mean(accuracies),
        per_slice={
            key: _mean([run.per_slice.get(key, 0.0) for run in best_runs])
            for key in best_runs[0].per_slice
        },
        cost=cost,
        best_lr=best,
        spec_text=spec_text,
        by_lr={lr: _mean([r.accuracy for r in group]) for lr, group in sorted(by_lr.items())},
        spread=_spread(accuracies),
        lr_status=status,
        runs=runs + [run for run in best_runs if run.final],
    )


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
    """A cost-model quantity of the softmax-attention baseline, whole model, test length:
    the attention mixer's own heads (the base's count, each d_model / heads wide)."""
    spec = parse_spec(yaml.safe_dump(base_rnn_spec(space, d_model=d_model), sort_keys=False))
    heads = spec.memory.heads
    head_dim = spec.layer.d_model // heads
    cost = attention_cost(heads, head_dim, head_dim, eval_length(space))
    return float(cost[COST_KEYS[key]]) * space.train.layers


def layer_latency_ms(
    factory: MixerFactory, d_model: int, space: SearchSpace, *, repeats: int = 20
) -> float:
    """Median forward time of one mixer layer on CUDA (batch of train.batch_size at the
    test length), times the number of layers: the gpu_latency_ms cost."""
    if not torch.cuda.is_available():
        raise HardwareUnavailable(
            "timing a layer for gpu_latency_ms needs a CUDA GPU; torch sees none"
        )
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


def spec_mixer(spec_text: str, workdir: str | Path) -> tuple[int, MixerFactory]:
    """(d_model, mixer factory) of a spec (its YAML text), its package built under
    workdir."""
    workdir = Path(workdir)
    spec_dir = workdir / "specs"
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec_path = spec_dir / f"{yaml.safe_load(spec_text)['name']}.yaml"
    spec_path.write_text(spec_text, encoding="utf-8")
    built = build(spec_path, workdir / "generated")
    return built.spec.layer.d_model, mcgen_mixer(built.path)


def attention_reference(space: SearchSpace, d_model: int | None) -> tuple[int, MixerFactory]:
    """(d_model, mixer factory) of softmax attention as the space's reference point: the
    base spec's width (or d_model) and heads."""
    spec = parse_spec(yaml.safe_dump(base_rnn_spec(space, d_model=d_model), sort_keys=False))
    return spec.layer.d_model, attention_mixer(spec.layer.d_model, spec.memory.heads)


def evaluate(
    spec_mapping: dict,
    space: SearchSpace,
    workdir: str | Path,
    *,
    data_cache: Path | None = None,
    done_runs: Mapping[str, dict] | None = None,
    on_run: OnRun | None = None,
    checkpoints: RunCheckpoints | None = None,
) -> Evaluation:
    """Build the spec's package under workdir, train it at every learning rate and seed
    of the space (sweep) and score it. data_cache: where generated MQAR data is kept
    (None: not kept); done_runs, on_run: see sweep; checkpoints: where its runs' states
    are kept between evaluations (None: in memory)."""
    text = yaml.safe_dump(spec_mapping, sort_keys=False)
    d_model, factory = spec_mixer(text, workdir)
    if space.objectives.cost in MEASURED_COSTS:
        require_hardware(space)  # before training: fail fast
        cost = layer_latency_ms(factory, d_model, space)
    else:
        cost = spec_cost(text, space)
    return _score(space, d_model, factory, cost, text, data_cache, done_runs, on_run, checkpoints)


def base_rnn_spec(space: SearchSpace, *, d_model: int | None = None) -> dict:
    """The space's spec without caching (aggregation none, one segment): the base RNN of
    the same width, a reference point every cached variant should beat. d_model: the
    width (default: the base's, or the first choice of a varied width)."""
    mapping = first_choice(space, d_model=d_model)
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
    *,
    data_cache: Path | None = None,
    d_model: int | None = None,
    done_runs: Mapping[str, dict] | None = None,
    on_run: OnRun | None = None,
    checkpoints: RunCheckpoints | None = None,
) -> Evaluation:
    """Softmax attention of the base spec's width and heads, trained like the candidates;
    its cost is the key/value cache (decode) or attention FLOPs at the test length, or
    its measured forward time (gpu_latency_ms)."""
    width, factory = attention_reference(space, d_model)
    if space.objectives.cost in MEASURED_COSTS:
        require_hardware(space)
        value = layer_latency_ms(factory, width, space)
    else:
        value = attention_model_cost(space, space.objectives.cost, d_model)
    return _score(space, width, factory, value, "", data_cache, done_runs, on_run, checkpoints)
