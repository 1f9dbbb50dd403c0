"""Checks of the deep memories as the paper study builds them (docs/research/mqar_budget.md,
"The deep memories"): the torch backend against the fp64 reference, and a gradient
reaching every parameter of MCLayer.

    PYTHONPATH=$PWD python benchmarks/deep_memory_checks.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import yaml
from mqar_budget import base_spec

from mcgen.build import build
from mcgen.packages import import_package


def package(recurrence: str, aggregation: str, workdir: Path):
    """The study's d24 spec of `recurrence`, as the base RNN or with GRM over segments of 16."""
    spec = base_spec(recurrence, 24)
    spec["name"] = f"check_{recurrence}_{aggregation}"
    if aggregation == "grm":
        spec["aggregation"] = {"kind": "grm"}
        spec["cache"]["segments"] = {"kind": "constant", "length": 16}
    path = workdir / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return import_package(build(path, workdir / "generated").path)


def layer_with_memory(module, dtype):
    """An MCLayer whose initial last layer is nonzero (it starts at zero), so that every
    weight of the memory is on a path to the output."""
    torch.manual_seed(0)
    layer = module.MCLayer().to(dtype)
    with torch.no_grad():
        for weights in layer.memory_init:
            weights.normal_(0, 0.3)
    return layer


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as workdir:
        for recurrence in ("dla", "titans"):
            for aggregation in ("none", "grm"):
                module = package(recurrence, aggregation, Path(workdir))
                layer = layer_with_memory(module, torch.float64)
                inputs = layer._project(torch.randn(2, 64, 24, dtype=torch.float64))
                weights = list(layer.memory_init)
                got = module.mc_forward(**inputs, weights=weights, heads=layer.heads)
                want = module.reference(**inputs, weights=weights)
                gap = float((got - want).abs().max().detach())
                print(f"{recurrence} {aggregation}: max |torch - reference| = {gap:.1e}")
            layer = layer_with_memory(module, torch.float32)  # the GRM layer: u too
            layer(torch.randn(3, 64, 24)).square().sum().backward()
            for name, parameter in layer.named_parameters():
                norm = None if parameter.grad is None else float(parameter.grad.norm())
                print(f"{recurrence} grad {name}: {norm}")


if __name__ == "__main__":
    main()
