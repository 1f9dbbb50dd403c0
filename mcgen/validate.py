"""`mcgen validate`: run a generated package's correctness ladder and collect the results.

The ladder itself is generated with the package (its selftest module), so exported
packages carry it; this module finds the package, refuses a stale or edited one, and
runs the ladder for the backends asked for.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType

from mcgen.packages import PackageError, drift, import_package
from mcgen.spec import Spec

DEFAULT_DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class CheckResult:
    backend: str
    dtype: str
    shape: str
    quantity: str
    error: float
    tolerance: float
    passed: bool


@dataclass(frozen=True)
class ValidationReport:
    package: Path
    checks: list[CheckResult]
    skipped: list[str]  # backends asked for but not available here, and why
    # What the shapes checked leave out of the spec (a --shape that reaches no segment end).
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_json(self) -> dict:
        return {
            "package": str(self.package),
            "passed": self.passed,
            "skipped": self.skipped,
            "warnings": self.warnings,
            "checks": [asdict(c) for c in self.checks],
        }


def find_package(spec: Spec, spec_path: Path, package: Path | None, default_out: Path) -> Path:
    """The folder of `spec`'s built package: `package` (the package itself, or the --out
    folder of `mcgen build` that holds it), or default_out/<name>."""
    if package is None:
        default = default_out / spec.name
        if not _is_package(default):
            raise PackageError(
                f"{default}: no generated package here; run `mcgen build {spec_path}` first, "
                f"or, if you built it with --out DIR, pass --package DIR/{spec.name}"
            )
        return default
    for candidate in (package, package / spec.name):
        if _is_package(candidate):
            return candidate
    raise PackageError(
        f"--package {package}: no generated package there, nor in {package / spec.name}; "
        f"pass the folder `mcgen build --out DIR` wrote, DIR/{spec.name}"
    )


def _is_package(folder: Path) -> bool:
    return (folder / "__init__.py").is_file()


def open_package(package_dir: Path, spec: Spec | None = None) -> ModuleType:
    """Import a generated package once it is known to be unedited and built from `spec`."""
    if not _is_package(package_dir):
        raise PackageError(f"{package_dir}: no generated package here; run `mcgen build` first")
    problems = drift(package_dir, spec)
    if problems:
        raise PackageError("\n".join(problems))
    return import_package(package_dir)


def _selftest(package: ModuleType) -> ModuleType:
    return importlib.import_module(f"{package.__name__}.selftest")


def default_device() -> str:
    """Where the ladder runs: the GPU when there is one (the Triton kernels compile there)."""
    import torch  # here, not at the top: `mcgen build` and `inspect` never need it

    return "cuda" if torch.cuda.is_available() else "cpu"


def plan_backends(
    package: ModuleType,
    backends: Sequence[str] | None,
    dtypes: Sequence[str],
    device: str,
) -> tuple[list[tuple[str, str]], list[str]]:
    """((backend, dtype) pairs to run, what is skipped and why).

    Without `backends`, every generated backend that runs here: triton needs CUDA (on a
    CPU it is skipped, with a note). Asked for by name on a CPU, triton runs in Triton's
    interpreter: TRITON_INTERPRET=1 is set here, before its kernels are first imported.
    """
    available = tuple(package.BACKENDS)
    if backends:
        wanted = list(dict.fromkeys(backends))
        skipped = [f"{b}: not generated for this spec" for b in wanted if b not in available]
        wanted = [b for b in wanted if b in available]
        if "triton" in wanted and not device.startswith("cuda"):
            os.environ["TRITON_INTERPRET"] = "1"
    else:
        runnable = _selftest(package).default_backends(device)
        wanted = [b for b in available if b in runnable]
        skipped = [
            f"{b}: no CUDA device here (--backend {b} runs it in Triton's interpreter, slowly)"
            for b in available
            if b not in runnable
        ]
    pairs = []
    for backend in wanted:
        for dtype in dtypes:
            if backend == "triton" and dtype == "float64":
                skipped.append("triton float64: the kernels compute in float32")
            else:
                pairs.append((backend, dtype))
    return pairs, skipped


def ladder_steps(
    package: ModuleType,
    *,
    backends: Sequence[str] | None,
    dtypes: Sequence[str],
    quick: bool,
    device: str | None = None,
    shapes: Sequence[tuple[int, int, int, int, int]] | None = None,
) -> int:
    """How many progress steps `validate_package` will report (for a progress bar)."""
    device = device or default_device()
    pairs, _ = plan_backends(package, backends, dtypes, device)
    if shapes:
        return len(pairs) * len(shapes)
    ladder_shapes = _selftest(package).ladder_shapes
    return sum(len(ladder_shapes(quick, backend, device)) for backend, _ in pairs)


def parse_shapes(package: ModuleType, texts: Sequence[str]) -> list[tuple[int, int, int, int, int]]:
    """'BxTxHxKxV' strings -> shapes, parsed by the package's own selftest (ValueError if bad)."""
    return [_selftest(package).parse_shape(text) for text in texts]


def shape_warnings(
    package: ModuleType,
    *,
    quick: bool,
    device: str | None = None,
    shapes: Sequence[tuple[int, int, int, int, int]] | None = None,
) -> list[str]:
    """What the shapes checked (the given ones, else the ladder's) leave unchecked of the
    spec: no segment end reached, no more cached memories than top_k, ... One line each."""
    selftest = _selftest(package)
    if not hasattr(selftest, "shape_warnings"):
        return []  # a package built by an earlier mcgen: its ladder cannot tell
    if not shapes:
        # Every default shape has the ladder's one length: the first speaks for all.
        shapes = selftest.ladder_shapes(quick, "torch", device or default_device())[:1]
    return selftest.shape_warnings(shapes)


def validate_package(
    package: ModuleType,
    *,
    backends: Sequence[str] | None = None,
    dtypes: Sequence[str] = DEFAULT_DTYPES,
    quick: bool = False,
    progress: Callable[[str], None] | None = None,
    device: str | None = None,
    shapes: Sequence[tuple[int, int, int, int, int]] | None = None,
) -> ValidationReport:
    """Run the ladder; `shapes` ((B, T, H, K, V) each) replaces its own shapes."""
    device = device or default_device()
    pairs, skipped = plan_backends(package, backends, dtypes, device)
    warnings = shape_warnings(package, quick=quick, device=device, shapes=shapes)
    ladder = _selftest(package).run_ladder
    checks = []
    for backend, dtype in pairs:
        checks += ladder(
            [backend], (dtype,), quick=quick, device=device, progress=progress, shapes=shapes
        )
    results = [
        CheckResult(c.backend, c.dtype, c.shape, c.quantity, c.error, c.tolerance, c.passed)
        for c in checks
    ]
    return ValidationReport(Path(package.__path__[0]), results, skipped, warnings)
