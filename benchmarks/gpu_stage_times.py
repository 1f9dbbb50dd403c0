"""Where the time of one validation goes: compile, kernels, reference, decode (seconds).

    python benchmarks/gpu_stage_times.py PACKAGE_DIR BxTxHxKxV DTYPE

For a `mcgen validate` that runs longer than expected on a GPU: prints a line per stage
as it ends, so that a run stopped by a time limit still says which stage was slow.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

import torch


def main() -> int:
    package_dir, shape_text, dtype_name = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    sys.path.insert(0, str(package_dir.parent))
    package = importlib.import_module(package_dir.name)
    selftest = importlib.import_module(f"{package_dir.name}.selftest")
    shape = selftest.parse_shape(shape_text)
    dtype = getattr(torch, dtype_name)
    start = time.perf_counter()

    def stage(label: str) -> None:
        torch.cuda.synchronize()
        print(
            f"{package_dir.name} {shape_text} {dtype_name}: {label} "
            f"at {time.perf_counter() - start:.1f} s",
            flush=True,
        )

    inputs = selftest.make_inputs(*shape, dtype=dtype, seed=0, device="cuda")
    leaves = {
        n: (x.detach().clone().requires_grad_(True) if torch.is_tensor(x) else x)
        for n, x in inputs.items()
    }
    out = package.mc_forward(**leaves, backend="triton")
    stage("first triton forward (compiles)")
    out.float().square().sum().backward()
    stage("first triton backward (compiles)")
    for _ in range(3):
        out = package.mc_forward(**leaves, backend="triton")
        out.float().square().sum().backward()
    stage("three more triton forward+backward")
    ref_leaves = {
        n: (x.detach().double().requires_grad_(True) if torch.is_tensor(x) else x)
        for n, x in inputs.items()
    }
    ref = package.reference(**ref_leaves)
    stage("fp64 reference forward")
    ref.square().sum().backward()
    stage("fp64 reference backward")
    selftest.check_streaming("triton", dtype, shape, device="cuda")
    stage("streaming checks (pieces, decode)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
