"""`mcgen build`: spec file -> validated spec -> IR passes -> plan -> generated package."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mcgen.codegen.package import RenderedPackage, render_package
from mcgen.ir.plan import Plan
from mcgen.passes.pipeline import compile_spec
from mcgen.spec import Spec, load_spec

DEFAULT_OUT = Path("generated")


@dataclass(frozen=True)
class BuildResult:
    spec: Spec
    plan: Plan
    package: RenderedPackage
    path: Path  # the package directory written


def build_command(spec_path: str | Path, out_dir: str | Path = DEFAULT_OUT) -> str:
    """The command that regenerates a package, as its files' headers state it."""
    command = f"mcgen build {Path(spec_path).as_posix()}"
    if Path(out_dir) != DEFAULT_OUT:
        command += f" --out {Path(out_dir).as_posix()}"
    return command


def render_spec(
    spec_path: str | Path, *, command: str | None = None
) -> tuple[Spec, Plan, RenderedPackage]:
    """Everything a build writes, in memory: nothing touches the disk (bad specs raise first)."""
    spec = load_spec(spec_path).spec
    plan = compile_spec(spec).plan
    package = render_package(spec, plan, command=command or build_command(spec_path))
    return spec, plan, package


def build(spec_path: str | Path, out_dir: str | Path = DEFAULT_OUT) -> BuildResult:
    spec, plan, package = render_spec(spec_path, command=build_command(spec_path, out_dir))
    path = package.write(Path(out_dir))
    return BuildResult(spec, plan, package, path)
