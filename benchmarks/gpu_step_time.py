"""Seconds per training step of a search space's slowest candidate, to size a device call.

    python benchmarks/gpu_step_time.py SPACE.yaml [--where FIELD=VALUE] [--steps N]
                                       [--processes P] [--json]

Builds the candidates of the space's grid at its widest width (those whose parameter
FIELD is VALUE, with --where: a probe that skips kernels it would compile for nothing),
keeps the one with the most operations per step (counted on its first step: a small
model's step time on a GPU follows its launch count, not its width), and times N steps of
it (forward, backward, AdamW) on the space's training device at its batch size and
training length, in P processes at once (a search's workers share one GPU: the step time
that sizes a study is the one measured beside the others). Random tokens stand in for
MQAR: a step's time does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import yaml
from torch.profiler import ProfilerActivity, profile

from mcgen.bench.timing import synchronize
from mcgen.search.objective import new_model, spec_mixer, train_device
from mcgen.search.space import SearchSpace, grid_specs, load_space, widths

WARM_UP_STEPS = 3  # kernels compiled and cached, the allocator settled


def _stepper(space: SearchSpace, mapping: dict, workdir: str) -> Callable[[], None]:
    """One training step of the candidate `mapping` (its package built under workdir)."""
    device = train_device(space)
    batch = space.train.batch_size
    length = max(split.seq_len for split in space.data.train)
    tokens = torch.randint(0, space.data.vocab_size, (batch, length), device=device)
    where = torch.ones(batch, length, dtype=torch.bool, device=device)
    d_model, factory = spec_mixer(yaml.safe_dump(mapping, sort_keys=False), workdir)
    model = new_model(space, d_model, factory, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        loss = F.cross_entropy(model(tokens, where), tokens[where])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _seconds_per_step(space_path: str, mapping: dict, steps: int, start_together) -> float:
    """One process's mean step time, its timed steps begun with the others' (a barrier)."""
    space = load_space(space_path)
    device = train_device(space)
    with tempfile.TemporaryDirectory() as workdir:
        step = _stepper(space, mapping, workdir)
        for _ in range(WARM_UP_STEPS):
            step()
        synchronize(device)
        start_together.wait()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        return (time.perf_counter() - start) / steps


def _slowest(space: SearchSpace, where: str | None) -> tuple[dict, dict, int]:
    """(parameters, spec, operations per step) of the candidate with the most operations."""
    field, _, value = (where or "").partition("=")
    widest = max(widths(space))
    slowest: tuple[dict, dict, int] | None = None
    with tempfile.TemporaryDirectory() as workdir:
        for params, mapping in grid_specs(space):
            if mapping["layer"]["d_model"] != widest:
                continue
            if where and str(params.get(field)) != value:
                continue
            step = _stepper(space, mapping, workdir)
            with profile(activities=[ProfilerActivity.CPU]) as trace:
                step()
            operations = sum(event.count for event in trace.key_averages())
            if slowest is None or operations > slowest[2]:
                slowest = (params, mapping, operations)
    if slowest is None:
        raise SystemExit(f"no candidate at width {widest}" + (f" with {where}" if where else ""))
    return slowest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("space")
    parser.add_argument("--where", default=None, help="FIELD=VALUE: only these candidates")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    space = load_space(args.space)
    params, mapping, operations = _slowest(space, args.where)
    # spawn: CUDA cannot be used in a forked child of a process that has used it.
    context = multiprocessing.get_context("spawn")
    start_together = context.Manager().Barrier(args.processes)
    with context.Pool(args.processes) as pool:
        seconds = pool.starmap(
            _seconds_per_step,
            [(args.space, mapping, args.steps, start_together)] * args.processes,
        )
    result = {
        "candidate": params,
        "device": str(train_device(space)),
        "operations_per_step": operations,
        "processes": args.processes,
        "seconds_per_step": round(statistics.median(seconds), 4),
        "slowest_process_seconds_per_step": round(max(seconds), 4),
    }
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
