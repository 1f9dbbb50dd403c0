"""`mcgen validate`: run a generated package's correctness ladder and collect the results.

The ladder itself is generated with the package (its selftest module), so exported
packages carry it; this module finds the package, refuses a stale or edited one, and
runs the ladder for the backends asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
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

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_json(self) -> dict:
        return {
            "package": str(self.package),
            "passed": self.passed,
            "skipped": self.skipped,
            "checks": [asdict(c) for c in self.checks],
        }


def open_package(package_dir: Path, spec: Spec | None = None) -> ModuleType:
    """Import a generated package once it is known to be unedited and built from `spec`."""
    if not (package_dir / "__init__.py").is_file():
        raise PackageError(f"{package_dir}: no generated package here; run `mcgen build` first")
    problems = drift(package_dir, spec)
    if problems:
        raise PackageError("\n".join(problems))
    return import_package(package_dir)


def _selftest(package: ModuleType) -> ModuleType:
    return importlib.import_module(f"{package.__name__}.selftest")


def ladder_steps(
    package: ModuleType, *, backends: Sequence[str] | None, dtypes: Sequence[str], quick: bool
) -> int:
    """How many progress steps `validate_package` will report (for a progress bar)."""
    wanted = [b for b in (backends or package.BACKENDS) if b in package.BACKENDS]
    return len(wanted) * len(dtypes) * len(_selftest(package).ladder_shapes(quick))


def validate_package(
    package: ModuleType,
    *,
    backends: Sequence[str] | None = None,
    dtypes: Sequence[str] = DEFAULT_DTYPES,
    quick: bool = False,
    progress: Callable[[str], None] | None = None,
) -> ValidationReport:
    available = tuple(package.BACKENDS)
    wanted = tuple(backends) if backends else available
    skipped = [f"{b}: not generated for this spec" for b in wanted if b not in available]
    checks = _selftest(package).run_ladder(
        [b for b in wanted if b in available], tuple(dtypes), quick=quick, progress=progress
    )
    results = [
        CheckResult(c.backend, c.dtype, c.shape, c.quantity, c.error, c.tolerance, c.passed)
        for c in checks
    ]
    return ValidationReport(Path(package.__path__[0]), results, skipped)
