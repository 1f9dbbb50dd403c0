"""Compile a spec's generated Triton kernels for a Hopper GPU (sm_90) on a machine without one.

Triton's interpreter accepts programs that the GPU compiler rejects (dot shapes, shared
memory over the card's limit), and a GPU is often not at hand. This script runs one
forward and backward of each spec under the interpreter at a tiny sequence length but
the real head sizes (tile sizes depend on K, V and the chunk, not on T), records every
kernel launch, then compiles each distinct launch with Triton's own ptxas for sm_90 and
prints its shared memory against the card's limit.

    python benchmarks/compile_sm90.py specs/grm.yaml specs/ssc.yaml --key-dim 128 --value-dim 128

Exit status 1 when a kernel does not compile or needs more shared memory than sm_90 has.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Hopper's largest shared memory per block (227 KB, opt-in).
SM90_SHARED_LIMIT = 232448
ROOT = Path(__file__).resolve().parents[1]


def capture(spec: Path, workdir: Path, key_dim: int, value_dim: int, segment_length, dtype):
    """Run the package once under the interpreter; return its kernel launches (deduplicated)."""
    os.environ["TRITON_INTERPRET"] = "1"
    import torch
    from triton.runtime import interpreter

    from mcgen.bench.variants import build_target

    target = build_target(
        spec, workdir, segment_length=segment_length, heads=1, key_dim=key_dim, value_dim=value_dim
    )
    launches: dict[str, dict] = {}
    original = interpreter.InterpretedFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        described = {
            "module": self.fn.__module__,
            "kernel": self.fn.__name__,
            "args": [describe(a) for a in args],
            "kwargs": {k: describe(v) for k, v in kwargs.items()},
        }
        launches.setdefault(json.dumps(described, sort_keys=True), described)
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    interpreter.InterpretedFunction.run = record
    try:
        seq_len = 2 * (target.segment_length or 64) + 5
        inputs = target.selftest.make_inputs(1, seq_len, 1, key_dim, value_dim, dtype=dtype, seed=0)
        leaves = {
            n: (x.detach().clone().requires_grad_(True) if torch.is_tensor(x) else x)
            for n, x in inputs.items()
        }
        out = target.package.mc_forward(**leaves, backend="triton")
        out.float().square().sum().backward()
    finally:
        interpreter.InterpretedFunction.run = original
    return Path(target.package.__path__[0]), list(launches.values())


def describe(value):
    import torch

    if torch.is_tensor(value):
        return {"tensor": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return {"value": value}
    raise TypeError(f"cannot describe a kernel argument of type {type(value).__name__}")


POINTER_TYPES = {
    "float32": "*fp32",
    "bfloat16": "*bf16",
    "float16": "*fp16",
    "int32": "*i32",
    "int64": "*i64",
    "bool": "*i1",
    "float64": "*fp64",
}


def compile_launches(package_dir: Path, launches: list[dict]) -> list[dict]:
    """Compile every recorded launch for sm_90 (in this process: no interpreter here)."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sys.path.insert(0, str(package_dir.parent))
    package = importlib.import_module(package_dir.name)
    results = []
    for launch in launches:
        module_name = launch["module"].split(".")[-1]
        module = importlib.import_module(f"{package.__name__}.{module_name}")
        fn = getattr(module, launch["kernel"])
        kwargs = dict(launch["kwargs"])
        options = {"num_warps": kwargs.pop("num_warps", {"value": 4})["value"]}
        if "num_stages" in kwargs:
            options["num_stages"] = kwargs.pop("num_stages")["value"]
        bound = dict(zip(fn.arg_names, launch["args"], strict=False))
        bound.update(kwargs)
        signature, constexprs = {}, {}
        for param in fn.params:
            arg = bound.get(param.name, {"value": param.default})
            if param.is_constexpr:
                signature[param.name] = "constexpr"
                constexprs[param.name] = arg["value"]
            elif "tensor" in arg:
                signature[param.name] = POINTER_TYPES[arg["tensor"]]
            elif isinstance(arg["value"], bool):
                signature[param.name] = "i1"
            elif isinstance(arg["value"], int):
                signature[param.name] = "i32" if abs(arg["value"]) < 2**31 else "i64"
            elif isinstance(arg["value"], float):
                signature[param.name] = "fp32"
            else:
                signature[param.name] = "constexpr"
                constexprs[param.name] = arg["value"]
        label = f"{module_name}.{launch['kernel']}"
        try:
            compiled = triton.compile(
                ASTSource(fn, signature, constexprs),
                target=GPUTarget("cuda", 90, 32),
                options=options,
            )
            shared = compiled.metadata.shared
            ok = shared <= SM90_SHARED_LIMIT
            results.append(
                {
                    "kernel": label,
                    "shared": shared,
                    "ok": ok,
                    "constexprs": {k: v for k, v in constexprs.items() if v is not None},
                }
            )
        except Exception as exc:  # a compile error is the finding: report it, go on
            results.append(
                {
                    "kernel": label,
                    "shared": None,
                    "ok": False,
                    "error": f"{type(exc).__name__}: {str(exc)[-600:]}",
                }
            )
    return results


def check_variant(spec, work, where, key_dim, value_dim, segment_length, dtype) -> int:
    """Capture one variant's launches here, compile them in a child without the
    interpreter; print a line per kernel; return how many failed."""
    package_dir, launches = capture(spec, work, key_dim, value_dim, segment_length, dtype)
    job = work / "launches.json"
    job.write_text(json.dumps({"package": str(package_dir), "launches": launches}))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    child = subprocess.run(
        [sys.executable, __file__, "x", "--compile", str(job)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    if child.returncode:
        print(f"{where}: the compiling process failed\n{child.stderr[-2000:]}")
        return 1
    failed = 0
    for r in json.loads(child.stdout.splitlines()[-1]):
        failed += not r["ok"]
        shared = "-" if r["shared"] is None else f"{r['shared'] / 1024:.0f} KB"
        print(f"{where:45} {r['kernel']:42} {shared:>8}  {'ok' if r['ok'] else 'FAIL'}")
        if "error" in r:
            print("    " + r["error"].replace("\n", "\n    "))
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("specs", nargs="+", type=Path)
    parser.add_argument("--key-dim", type=int, action="append")
    parser.add_argument("--value-dim", type=int, action="append")
    parser.add_argument("--segment-length", type=int, action="append")
    parser.add_argument("--dtype", action="append", choices=["float32", "bfloat16"])
    parser.add_argument("--compile", dest="compile_json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.compile_json:  # the child: compile what the parent captured
        job = json.loads(args.compile_json.read_text())
        print(json.dumps(compile_launches(Path(job["package"]), job["launches"])))
        return 0

    import torch

    failed = 0
    key_dims = args.key_dim or [64, 128]
    value_dims = args.value_dim or key_dims
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.specs:
            for key_dim, value_dim in zip(key_dims, value_dims, strict=True):
                for segment_length in args.segment_length or [None]:
                    for dtype_name in args.dtype or ["float32", "bfloat16"]:
                        work = Path(tmp) / f"w{len(os.listdir(tmp))}"
                        dtype = getattr(torch, dtype_name)
                        where = (
                            f"{spec.stem} K={key_dim} V={value_dim} "
                            f"C={segment_length or 'spec'} {dtype_name}"
                        )
                        failed += check_variant(
                            spec, work, where, key_dim, value_dim, segment_length, dtype
                        )
    print(f"{failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
