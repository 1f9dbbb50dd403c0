"""Distributed training of generated MC layers on torch.distributed: two CPU processes (gloo)
train one step with DistributedDataParallel, then with FSDP2 (`fully_shard`), each on half
of a batch; their gradients and updated weights must equal one process on the whole batch.

Covered: a matrix memory on the torch backend and on the Triton backend (its custom ops, in
Triton's interpreter), and a deep memory (its initial MLP weights are [H, out, in]
parameters that FSDP2 shards along the heads).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from spec_helpers import spec_text
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from mcgen.codegen.package import render_package
from mcgen.packages import import_package
from mcgen.passes.pipeline import compile_spec
from mcgen.spec import parse_spec

pytestmark = pytest.mark.slow  # two processes start per case: about 10 s each

WORLD = 2
BATCH, SEQ_LEN, D_MODEL = 4, 13, 16  # 13 tokens: past the first segment end (8)
LR = 0.5

# case -> (spec, backend, dtype); the Triton kernels take no float64.
CASES = {
    "linear-torch": (spec_text(name="ddp_linear"), "torch", torch.float64),
    "linear-triton": (spec_text(name="ddp_linear"), "triton", torch.float32),
    "titans-torch": (
        spec_text(name="ddp_titans", recurrence="titans", deep="{minibatch: 4}", chunk_size=None),
        "torch",
        torch.float64,
    ),
}
# Largest difference allowed, relative to the largest entry of each tensor: the layers take
# their gates (decay, learning rate) in float32 whatever the model's dtype, so a batch split
# in two rounds differently there. Not averaging the ranks would be off by a factor of 2.
TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-5}


class TinyModel(nn.Module):
    """Two MC layers with residuals and a linear read-out: enough to exercise every parameter."""

    def __init__(self, package, backend: str):
        super().__init__()
        self.mixers = nn.ModuleList(
            package.MCLayer(D_MODEL, layer_idx=i, backend=backend) for i in range(2)
        )
        self.readout = nn.Linear(D_MODEL, D_MODEL)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for mixer in self.mixers:
            x = x + mixer(x)
        return self.readout(x)


def make_model(package, backend: str, dtype: torch.dtype) -> TinyModel:
    torch.manual_seed(0)  # every process builds the same weights
    return TinyModel(package, backend).to(dtype)


def make_batch(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, SEQ_LEN, D_MODEL, generator=generator, dtype=dtype)
    target = torch.randn(BATCH, SEQ_LEN, D_MODEL, generator=generator, dtype=dtype)
    return x, target


def train_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> None:
    """One SGD step on the mean squared error of x's rows (DDP and FSDP2 average the ranks')."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    nn.functional.mse_loss(model(x), target).backward()
    optimizer.step()


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP2's sharded parameter or gradient) gathered whole; a tensor as it is."""
    full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
    return full.detach().clone()


def _snapshot(model: nn.Module, prefix: str = "") -> dict[str, dict[str, torch.Tensor]]:
    named = [(name.removeprefix(prefix), p) for name, p in model.named_parameters()]
    return {
        "grads": {name: _full(p.grad) for name, p in named},
        "weights": {name: _full(p) for name, p in named},
    }


def _worker(rank: int, case: str, package_dir: str, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        _, backend, dtype = CASES[case]
        package = import_package(Path(package_dir))
        x, target = make_batch(dtype)
        mine = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        results = {}

        ddp = DistributedDataParallel(make_model(package, backend, dtype))
        train_step(ddp, x[mine], target[mine])
        results["ddp"] = _snapshot(ddp, prefix="module.")

        sharded = make_model(package, backend, dtype)
        for mixer in sharded.mixers:
            fully_shard(mixer)
        fully_shard(sharded)
        train_step(sharded, x[mine], target[mine])
        results["fsdp"] = _snapshot(sharded)  # every rank gathers: a collective
        if rank == 0:
            torch.save(results, out_file)
        # Both ranks leave together: gloo aborted a rank that tore its group down while the
        # other was still saving (seen once under a loaded CI machine: SIGABRT at exit).
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_train_as_one(case: str, tmp_path: Path) -> None:
    text, backend, dtype = CASES[case]
    if backend == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the Triton backend on a CPU runs in Triton's interpreter only")
    spec = parse_spec(text, "tiny.yaml")
    built = render_package(spec, compile_spec(spec).plan, command="mcgen build tiny.yaml")
    package_dir = built.write(tmp_path / "package")
    out_file = tmp_path / "results.pt"
    mp.spawn(
        _worker,
        args=(case, str(package_dir), str(tmp_path / "rendezvous"), str(out_file)),
        nprocs=WORLD,
        join=True,
    )
    results = torch.load(out_file)

    single = make_model(import_package(package_dir), backend, dtype)
    train_step(single, *make_batch(dtype))
    expected = _snapshot(single)
    names = set(expected["grads"])
    for mode in ("ddp", "fsdp"):
        for quantity in ("grads", "weights"):
            got = results[mode][quantity]
            assert set(got) == names, (mode, quantity)
            for name in sorted(names):
                want = expected[quantity][name]
                scale = want.abs().max().item() or 1.0
                error = (got[name] - want).abs().max().item() / scale
                assert error < TOLERANCE[dtype], (mode, quantity, name, error)
    # The step moved every weight (a gradient of zero would pass the comparison vacuously).
    for name, grad in expected["grads"].items():
        assert grad.abs().max() > 0, name
