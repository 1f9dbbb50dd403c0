"""One MQAR training run of a base memory, for sizing the paper study's budget
(docs/research/mqar_budget.md): the study's trainer (mcgen.mqar.train), data and model,
with every knob on the command line; the run's curve and timing are written as JSON.

    nice -n 10 python benchmarks/mqar_budget.py gated_delta --d-model 24 --lr 3e-3 \
        --steps 8000 --zero-fillers --out runs/budget/gd24.json

Mixers: attention (the study's reference), or a generated package's base RNN (no
cache) of recurrence linear, delta, gated_delta, swla, dla or titans with the study's spec
fields (heads of 12; deep memories of depth 2, expansion 2, mini-batch 16). Data: the
study's MQAR (vocabulary 256, 8 pairs, train at 64 tokens, test at 64 and 128), with
Zoology's random fillers or, with --zero-fillers, filler token 0. One torch thread,
like a study worker. The diagnosis options (--conv proj, --theta-init, --mlp-only-read)
change the model only inside this script.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch
import yaml

from mcgen.bench.results import cpu_name
from mcgen.build import build
from mcgen.mqar.config import IGNORE_INDEX, MQARDataConfig, MQARSlice, TrainConfig
from mcgen.mqar.data import MQARData, load_data
from mcgen.mqar.model import MQARModel, ShortConv, attention_mixer, mcgen_mixer
from mcgen.mqar.train import evaluate, train
from mcgen.packages import import_package

DEEP_RECURRENCES = ("dla", "titans")
RECURRENCES = ("linear", "delta", "gated_delta", "swla", *DEEP_RECURRENCES)
HEAD_DIM = 12  # the paper study's heads (search/paper_cpu.yaml)
LAYERS = 2
SLOTS_REPORTED = 8  # per-slot accuracy of the first query slots after the pairs


def base_spec(recurrence: str, d_model: int, deep: dict | None = None) -> dict:
    """The base RNN (one segment, no aggregation) with the study's fields; `deep`
    overrides fields of a deep memory's section."""
    memory: dict = {
        "recurrence": recurrence,
        "heads": d_model // HEAD_DIM,
        "key_dim": HEAD_DIM,
        "value_dim": HEAD_DIM,
    }
    if recurrence in DEEP_RECURRENCES:
        memory["deep"] = {"depth": 2, "expansion": 2, "activation": "gelu", "minibatch": 16}
        memory["deep"].update(deep or {})
    return {
        "name": f"budget_{recurrence}_{d_model}",
        "memory": memory,
        "cache": {"init": "checkpoint", "segments": {"kind": "none"}},
        "compute": {"chunk_size": 16},
        "aggregation": {"kind": "none"},
        "layer": {"d_model": d_model},
    }


class ConvolvedLinear(torch.nn.Linear):
    """A projection, then its own causal convolution and SiLU (the flash-linear-attention
    layout), in place of the study's one convolution in front of the whole mixer."""

    def __init__(self, linear: torch.nn.Linear, kernel_size: int):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None)
        self.load_state_dict(linear.state_dict())
        self.conv = ShortConv(linear.out_features, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(self.conv(super().forward(x)))


def _drop_identity_from_read(backend) -> None:
    """Make a deep memory's read M(x) - x = W1 act(W2 x) (its torch backend, patched; the
    script's models are base RNNs, whose only read is the online one)."""
    full_read = backend.read_online

    def read_online(online, x):
        return full_read(online, x) - x

    backend.read_online = read_online


def mixer_factory(args: argparse.Namespace, workdir: Path):
    if args.mixer == "attention":
        return attention_mixer(args.d_model, args.d_model // HEAD_DIM, short_conv=args.short_conv)
    spec = base_spec(args.mixer, args.d_model, deep_fields(args))
    path = workdir / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    package = import_package(build(path, workdir / "generated").path)
    if args.mlp_only_read:
        _drop_identity_from_read(package.backend_torch)
    plain = mcgen_mixer(package, short_conv=0)

    def factory(layer_idx: int) -> torch.nn.Module:
        layer = plain(layer_idx)
        if args.theta_init is not None:
            # A deep memory's inner step size is sigmoid(lr_proj(x)): start it at theta_init.
            logit = math.log(args.theta_init / (1 - args.theta_init))
            torch.nn.init.constant_(layer.lr_proj.bias, logit)
        if args.conv == "proj":
            for name in ("q_proj", "k_proj", "v_proj"):
                setattr(layer, name, ConvolvedLinear(getattr(layer, name), args.short_conv))
            return layer
        if args.short_conv == 0:
            return layer
        # What mcgen_mixer builds: the same modules, made in the same order.
        return torch.nn.Sequential(ShortConv(layer.d_model, args.short_conv), layer)

    return factory


def deep_fields(args: argparse.Namespace) -> dict:
    """The deep-memory fields given on the command line (--minibatch, --depth, ...)."""
    fields = {
        "minibatch": args.minibatch,
        "depth": args.depth,
        "expansion": args.expansion,
        "lr": args.inner_lr,
        "momentum": args.momentum,
        "decay": args.decay,
    }
    return {name: value for name, value in fields.items() if value is not None}


def data_config(args: argparse.Namespace, *, zero_fillers: bool) -> MQARDataConfig:
    return MQARDataConfig(
        vocab_size=args.vocab,
        random_non_queries=not zero_fillers,
        seed=0,
        train=[MQARSlice(seq_len=args.seq_len, num_pairs=args.pairs, num_examples=args.examples)],
        test=[
            MQARSlice(seq_len=args.seq_len, num_pairs=args.pairs, num_examples=256),
            MQARSlice(seq_len=2 * args.seq_len, num_pairs=args.pairs, num_examples=256),
        ],
    )


@torch.no_grad()
def accuracy_by_slot(model: torch.nn.Module, data: MQARData) -> list[float]:
    """Accuracy of the queries in each of the first query slots (slot s: 2s tokens after
    the pairs, so the tokens written between the pairs and the query grow with s)."""
    model.eval()
    where = data.labels != IGNORE_INDEX
    correct = model(data.inputs, where).argmax(-1) == data.labels[where]
    slots = (where.nonzero()[:, 1] - 2 * data.split.num_pairs) // 2
    return [round(float(correct[slots == s].float().mean()), 3) for s in range(SLOTS_REPORTED)]


def cross_test(model: torch.nn.Module, args: argparse.Namespace) -> dict:
    """The trained model on the test sets of both filler kinds, by query slot too."""
    found = {}
    for zero in (False, True):
        _, test = load_data(data_config(args, zero_fillers=zero))
        accuracy, _ = evaluate(model, test, 64)
        found["zero" if zero else "random"] = {
            "accuracy": round(accuracy, 4),
            "by_slot_t64": accuracy_by_slot(model, test[0]),
        }
    return found


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mixer", choices=("attention", *RECURRENCES))
    parser.add_argument("--d-model", type=int, default=24)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--examples", type=int, default=40000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64, help="training length (test: it and 2x)")
    parser.add_argument("--layers", type=int, default=LAYERS)
    parser.add_argument("--minibatch", type=int, help="deep memories: memory.deep.minibatch")
    parser.add_argument("--depth", type=int, help="deep memories: memory.deep.depth")
    parser.add_argument("--expansion", type=int, help="deep memories: memory.deep.expansion")
    parser.add_argument("--inner-lr", type=float, help="deep memories: a constant theta")
    parser.add_argument("--momentum", type=float, help="titans: a constant eta")
    parser.add_argument("--decay", type=float, help="titans: a constant alpha")
    parser.add_argument("--zero-fillers", action="store_true", help="filler token 0, not random")
    parser.add_argument("--short-conv", type=int, default=3)
    parser.add_argument("--conv", choices=("front", "proj"), default="front")
    parser.add_argument("--theta-init", type=float, help="deep memories: initial inner step")
    parser.add_argument(
        "--mlp-only-read", action="store_true", help="deep memories: read without the identity"
    )
    parser.add_argument(
        "--cross-test", action="store_true", help="also test on the other filler kind"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.theta_init is not None and args.inner_lr is not None:
        # A constant theta has no lr_proj whose bias could set its start.
        parser.error("--theta-init sets the start of a learned theta; --inner-lr fixes it")
    deep_flags = {
        "--minibatch": args.minibatch,
        "--depth": args.depth,
        "--expansion": args.expansion,
        "--inner-lr": args.inner_lr,
        "--momentum": args.momentum,
        "--decay": args.decay,
        "--theta-init": args.theta_init,
        "--mlp-only-read": args.mlp_only_read or None,
    }
    deep_only = [flag for flag, value in deep_flags.items() if value is not None]
    if deep_only and args.mixer not in DEEP_RECURRENCES:
        parser.error(f"{', '.join(deep_only)}: deep memories only (dla, titans)")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    train_data, test_data = load_data(data_config(args, zero_fillers=args.zero_fillers))
    config = TrainConfig(
        d_model=args.d_model,
        layers=args.layers,
        lr=args.lr,
        max_steps=args.steps,
        batch_size=args.batch,
        warmup=args.warmup,
        eval_every=args.eval_every,
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory() as workdir:
        factory = mixer_factory(args, Path(workdir))
        torch.manual_seed(args.seed)
        model = MQARModel(args.vocab, args.d_model, args.layers, factory)
        started = time.perf_counter()
        result = train(model, train_data, test_data, config, progress=True)
        wall = time.perf_counter() - started
        record = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "cpu": f"{cpu_name()}, 1 torch thread",
            "steps": result.steps,
            "final_accuracy": round(result.accuracy, 4),
            "best_accuracy": round(result.best_accuracy, 4),
            "best_step": result.best_step,
            "diverged": result.diverged,
            "slices": result.slice_accuracy,
            "seconds": round(wall, 1),
            "eval_seconds": round(result.eval_seconds, 1),
            # (step, mean training loss since the last evaluation, test accuracy)
            "curve": [[e.step, round(e.loss, 4), round(e.accuracy, 4)] for e in result.history],
        }
        if args.cross_test:
            record["cross_test"] = cross_test(model, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(
        f"{args.mixer} d{args.d_model} lr {args.lr:g} batch {args.batch}: "
        f"best {result.best_accuracy:.4f} at {result.best_step}, final {result.accuracy:.4f} "
        f"after {result.steps} steps, {wall:.0f} s"
    )


if __name__ == "__main__":
    main()
