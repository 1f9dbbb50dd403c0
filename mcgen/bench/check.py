"""Compare an implementation's outputs and gradients with a trusted one before timing it.

The metric is mcgen's ladder's (docs/design.md): relative RMS error ||out - ref|| / ||ref||,
and a NaN or Inf anywhere is an infinite error. Gradients are those of every floating
input under one random upstream gradient (seeded, so every provider sees the same one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Inputs = dict[str, object]

# Relative RMS error allowed against the fp64 reference (design.md); gradients twice that.
# fp32 on CUDA may run tf32 matmuls.
TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2, "float16": 1e-2, "float64": 1e-10}
TF32_TOLERANCE = 5e-3


def tolerance(dtype: torch.dtype, device: torch.device) -> float:
    name = str(dtype).removeprefix("torch.")
    if name == "float32" and device.type == "cuda":
        return TF32_TOLERANCE
    return TOLERANCE[name]


@dataclass
class Evaluated:
    """One call's output and, when asked, the gradients of its floating inputs."""

    output: torch.Tensor
    grads: list[torch.Tensor | None] | None


def rel_error(value: torch.Tensor, truth: torch.Tensor) -> float:
    if value.shape != truth.shape:
        return float("inf")
    value, truth = value.double(), truth.double().to(value.device)
    if not torch.isfinite(value).all():
        return float("inf")
    norm = truth.norm()
    diff = (value - truth).norm()
    return float(diff / norm) if norm > 0 else float(diff)


def with_grad(inputs: Inputs, dtype: torch.dtype | None = None) -> tuple[Inputs, list]:
    """Fresh leaf copies of the inputs (cast to dtype) that need grad, and the list of them."""
    leaves: list[torch.Tensor] = []

    def leaf(x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to(dtype) if dtype is not None else x.detach()
        if x.is_floating_point():
            x = x.clone().requires_grad_(True)
            leaves.append(x)
        return x

    copied: Inputs = {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            copied[name] = leaf(value)
        elif isinstance(value, list):  # a deep memory's initial weights
            copied[name] = [leaf(x) for x in value]
        else:
            copied[name] = value
    return copied, leaves


def detached(inputs: Inputs, dtype: torch.dtype | None = None) -> Inputs:
    """The inputs detached (no gradients), floating ones cast to dtype when given."""

    def one(x: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        return x.to(dtype) if dtype is not None and x.is_floating_point() else x

    out: Inputs = {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            out[name] = one(value)
        elif isinstance(value, list):
            out[name] = [one(x) for x in value]
        else:
            out[name] = value
    return out


def upstream_grad(shape: torch.Size, device: torch.device, seed: int) -> torch.Tensor:
    """The random gradient every provider backpropagates, fp64 on `device` (cast per use)."""
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device)


def evaluate(
    forward: Callable[[Inputs], torch.Tensor],
    inputs: Inputs,
    *,
    grads: bool,
    seed: int = 0,
    dtype: torch.dtype | None = None,
) -> Evaluated:
    """Run forward on (a copy of) inputs, in dtype when given; with grads, backpropagate too."""
    if not grads:
        with torch.no_grad():
            return Evaluated(forward(detached(inputs, dtype)).detach(), None)
    copied, leaves = with_grad(inputs, dtype)
    out = forward(copied)
    upstream = upstream_grad(out.shape, out.device, seed).to(out.dtype)
    got = torch.autograd.grad(out, leaves, upstream, allow_unused=True)
    return Evaluated(out.detach(), [None if g is None else g.detach() for g in got])


def errors(candidate: Evaluated, truth: Evaluated) -> tuple[float, float | None]:
    """(output error, worst gradient error or None) of candidate against truth."""
    out_error = rel_error(candidate.output, truth.output)
    if candidate.grads is None or truth.grads is None:
        return out_error, None
    worst = 0.0
    for got, want in zip(candidate.grads, truth.grads, strict=True):
        if want is None:
            continue
        worst = max(worst, float("inf") if got is None else rel_error(got, want))
    return out_error, worst


def finite(evaluated: Evaluated) -> bool:
    tensors = [evaluated.output, *(g for g in evaluated.grads or [] if g is not None)]
    return all(bool(torch.isfinite(t).all()) for t in tensors)
