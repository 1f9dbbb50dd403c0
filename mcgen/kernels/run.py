"""`mcgen inspect SPEC --kernels`: build the spec at the shape, capture and compile its
kernels in a child process (mcgen.kernels.worker), and make the report.

The child is needed: capturing replaces Triton's launcher and driver process-wide, and
the package's kernels must be defined with Triton's interpreter off, whatever this
process (a test run under TRITON_INTERPRET=1, say) has already imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcgen.bench.variants import VariantError, variant_text
from mcgen.codegen.package import has_triton, render_package
from mcgen.ir.plan import Plan
from mcgen.kernels.compile import ARCHS, Compiled
from mcgen.kernels.cost import CARDS, DEFAULT_CARD, Problem
from mcgen.kernels.report import KernelReport, build_report
from mcgen.kernels.worker import EVENT_PREFIX
from mcgen.passes.pipeline import compile_spec
from mcgen.spec import Spec, SpecError, parse_spec

# The benchmark shape of docs/performance.md: 1 x 32768 tokens, 16 heads of 128 x 128.
DEFAULT_SHAPE = (1, 32768, 16, 128, 128)
DTYPES = ("bfloat16", "float16", "float32")

# progress(description, total) -> advance(step): mcgen.cli's progress bars.
Progress = Callable[[str, int], Callable[[str], None]]


class KernelReportError(Exception):
    """Bad input for the report (one line: the option, what was given, what is needed)."""


def parse_shape(text: str) -> tuple[int, int, int, int, int]:
    """'1x32768x16x128x128' -> (B, T, H, K, V)."""
    parts = text.lower().split("x")
    if len(parts) != 5 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise KernelReportError(
            f"--shape must be BxTxHxKxV, five positive integers such as 1x32768x16x128x128, "
            f"got {text!r}"
        )
    b, t, h, k, v = (int(p) for p in parts)
    return b, t, h, k, v


def check_choice(option: str, value: str, choices) -> str:
    if value not in choices:
        raise KernelReportError(f"{option} must be {' or '.join(choices)}, got {value!r}")
    return value


def report_from_options(
    spec_path: Path,
    *,
    kernels: bool,
    arch: str | None,
    shape: str | None,
    dtype: str | None,
    card: str | None,
    progress: Progress | None = None,
) -> KernelReport:
    """The report for `mcgen inspect SPEC --kernels` and its options (None: the default)."""
    if not kernels:
        raise KernelReportError("--arch, --shape, --dtype and --card apply with --kernels only")
    return kernel_report(
        spec_path,
        arch=arch or "sm_90",
        shape=DEFAULT_SHAPE if shape is None else parse_shape(shape),
        dtype=dtype or "bfloat16",
        card=card,
        progress=progress,
    )


def kernel_report(
    spec_path: Path,
    *,
    arch: str = "sm_90",
    shape: tuple[int, int, int, int, int] = DEFAULT_SHAPE,
    dtype: str = "bfloat16",
    card: str | None = None,
    progress: Progress | None = None,
) -> KernelReport:
    """Compile every Triton kernel of `spec_path` for `arch` as a run at `shape` in `dtype`
    launches them (the spec built with H, K and V of the shape), and report on each.

    Raises KernelReportError for bad options or a spec without Triton kernels, SpecError
    for a bad spec."""
    check_choice("--arch", arch, tuple(ARCHS))
    check_choice("--dtype", dtype, DTYPES)
    card = card or DEFAULT_CARD[arch]
    check_choice("--card", card, tuple(CARDS))
    with tempfile.TemporaryDirectory(prefix="mcgen-kernels-") as tmp:
        spec, plan, package_dir = build_variant(spec_path, shape, Path(tmp))
        job = {"package": str(package_dir), "shape": list(shape), "dtype": dtype, "arch": arch}
        captured, results = run_worker(job, Path(tmp), progress)
    return build_report(
        spec=spec.name,
        arch=ARCHS[arch],
        card=CARDS[card],
        shape=shape,
        dtype=dtype,
        problem=Problem.of(plan, shape),
        captured=captured,
        results=results,
    )


def build_variant(
    spec_path: Path, shape: tuple[int, int, int, int, int], out_dir: Path
) -> tuple[Spec, Plan, Path]:
    """Build the spec with the shape's H, K and V (as mcgen bench builds what it times)
    into out_dir/package/<name>; the spec, its plan and the package's folder."""
    _, _, heads, key_dim, value_dim = shape
    try:
        text = variant_text(spec_path, heads=heads, key_dim=key_dim, value_dim=value_dim)
    except VariantError as exc:
        raise KernelReportError(str(exc)) from None
    try:
        spec = parse_spec(text, str(spec_path))
    except SpecError as exc:  # the spec loads as written: the shape's sizes do not fit it
        problems = "; ".join(
            f"{problem.path}: {problem.message}" if problem.path else problem.message
            for problem in exc.problems
        )
        raise KernelReportError(
            f"{spec_path} at H={heads}, K={key_dim}, V={value_dim}: {problems}"
        ) from None
    plan = compile_spec(spec).plan
    if not has_triton(plan):
        raise KernelReportError(
            f"{spec_path}: {spec.name} has no Triton kernels ({plan.recurrence} memory); "
            f"--kernels needs a matrix memory (linear, decay, delta or gated_delta)"
        )
    package = render_package(spec, plan, command=f"mcgen inspect {spec_path} --kernels")
    return spec, plan, package.write(out_dir / "package")


def run_worker(
    job: dict[str, Any], workdir: Path, progress: Progress | None
) -> tuple[dict[str, Any], dict[int, Compiled]]:
    """Run the worker on `job`; its "captured" event and each compile's result."""
    job_file = workdir / "job.json"
    job_file.write_text(json.dumps(job), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(workdir / "triton-cache")  # empty: every kernel compiles
    b, t, h, k, v = job["shape"]
    capturing = progress and progress(f"capturing launches at {b}x{t}x{h}x{k}x{v}", 1)
    if capturing:
        capturing("forward and backward on CPU tensors")
    captured: dict[str, Any] | None = None
    results: dict[int, Compiled] = {}
    compiling = None
    with open(workdir / "worker.log", "w+", encoding="utf-8") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "mcgen.kernels.worker", str(job_file)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        )
        assert child.stdout is not None
        for line in child.stdout:
            if not line.startswith(EVENT_PREFIX):
                continue  # Triton's own output
            event = json.loads(line[len(EVENT_PREFIX) :])
            if event["event"] == "failed":
                child.wait()
                raise KernelReportError(event["message"])
            if event["event"] == "captured":
                captured = event
                if progress:
                    compiling = progress(f"compiling for {job['arch']}", event["compiles"])
            elif event["event"] == "compiling" and compiling:
                compiling(event["kernel"])
            elif event["event"] == "compiled":
                results[event["compile"]] = Compiled.from_json(event["result"])
        code = child.wait()
        log.seek(0)
        errors = log.read()
    expected = 0 if captured is None or not job.get("compile", True) else captured["compiles"]
    if code != 0 or captured is None or len(results) != expected:
        raise RuntimeError(
            f"the kernel report's worker failed (exit code {code}):\n{errors[-3000:]}"
        )
    return captured, results
