"""The `mcgen` command line: a thin layer over mcgen.build, .validate, .export and
.inspect_report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mcgen import __version__
from mcgen.bench.cli import bench as bench_command
from mcgen.build import DEFAULT_OUT, build_command, render_spec
from mcgen.export import (
    ExportError,
    ExportTestFailed,
    export_drift,
    export_spec,
    run_exported_tests,
)
from mcgen.inspect_report import inspect_spec, render_report
from mcgen.packages import PackageError
from mcgen.passes.pipeline import DEFAULT_SEQ_LEN
from mcgen.search.cli import search_app
from mcgen.spec import SpecError, load_spec
from mcgen.validate import (
    DEFAULT_DTYPES,
    ladder_steps,
    open_package,
    parse_shapes,
    validate_package,
)

app = typer.Typer(
    help=(
        "mcgen: build, validate, inspect and export memory-caching sequence models from YAML specs."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)
app.add_typer(search_app, name="search")

SpecArg = Annotated[Path, typer.Argument(help="A spec file (YAML), e.g. specs/grm.yaml.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document for machines.")]


def _version(value: bool) -> None:
    if value:
        out.print(f"mcgen {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    pass


@contextmanager
def _reported_errors(*also: type[Exception]) -> Iterator[None]:
    """Bad input ends the command with its message and exit code 2, never a traceback.

    `also`: a subcommand's own errors of bad input, reported the same way."""
    try:
        yield
    except SpecError as exc:
        for problem in exc.problems:
            # One problem per line, never wrapped: editors and scripts parse these.
            err.print(str(problem), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except (PackageError, ExportError, *also) as exc:
        err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def build(
    specs: Annotated[list[Path], typer.Argument(help="One or more spec files.")],
    out_dir: Annotated[
        Path, typer.Option("--out", help="Where packages go: OUT/<name>/.")
    ] = DEFAULT_OUT,
    as_json: JsonOpt = False,
) -> None:
    """Generate each spec's package in OUT/<name>/ (all specs are checked before any is written)."""
    with _reported_errors():
        rendered = []
        problems = []
        for spec_path in specs:
            try:
                rendered.append(render_spec(spec_path, command=build_command(spec_path, out_dir)))
            except SpecError as exc:
                problems += exc.problems
        if problems:
            raise SpecError(problems)
        names = [spec.name for spec, _, _ in rendered]
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:
            err.print(f"two specs share the name {', '.join(clashes)}: each names one package")
            raise typer.Exit(2)
        results = []
        for (spec, plan, package), spec_path in zip(rendered, specs, strict=True):
            path = package.write(out_dir)
            results.append(
                {"spec": str(spec_path), "package": str(path), "notes": list(plan.notes)}
            )
            if not as_json:
                out.print(f"built [bold]{spec.name}[/] -> {path}", highlight=False)
                for note in plan.notes:
                    out.print(f"  - {note}", markup=False, highlight=False)
    if as_json:
        out.print_json(json.dumps({"built": results}))


@app.command()
def validate(
    spec_path: Annotated[
        Path | None,
        typer.Argument(help="A spec file (YAML), e.g. specs/grm.yaml; optional with --exported."),
    ] = None,
    package_dir: Annotated[
        Path | None,
        typer.Option("--package", help="The generated package (default: generated/<name>)."),
    ] = None,
    exported: Annotated[
        Path | None,
        typer.Option(
            "--exported",
            help="A project written by `mcgen export`: check no file was edited, run its tests.",
        ),
    ] = None,
    backend: Annotated[
        list[str] | None,
        typer.Option(
            "--backend",
            help="Backend to check (repeat); default: every generated one that runs here "
            "(triton needs CUDA; asked for on a CPU, it runs in Triton's interpreter).",
        ),
    ] = None,
    dtype: Annotated[
        list[str] | None, typer.Option("--dtype", help="float64, float32 or bfloat16 (repeat).")
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="One shape (the spec's dimensions on CUDA or torch).")
    ] = False,
    shape: Annotated[
        list[str] | None,
        typer.Option(
            "--shape",
            help="BxTxHxKxV, e.g. 2x4096x4x64x64, instead of the ladder's shapes (repeat).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the correctness ladder: outputs and gradients against the fp64 reference, streaming.

    With --exported DIR: check an export for edited files, then run its own tests.
    """
    if exported is not None:
        _validate_exported(exported, spec_path, as_json)
        return
    if spec_path is None:
        err.print("give a SPEC to validate its package, or --exported DIR for an export")
        raise typer.Exit(2)
    dtypes = tuple(dtype or DEFAULT_DTYPES)
    bad = [d for d in dtypes if d not in ("float64", "float32", "bfloat16")]
    if bad:
        err.print(f"--dtype must be float64, float32 or bfloat16, got {', '.join(bad)}")
        raise typer.Exit(2)
    with _reported_errors():
        spec = load_spec(spec_path).spec
        package = open_package(package_dir or DEFAULT_OUT / spec.name, spec)
        try:
            shapes = parse_shapes(package, shape or [])
        except ValueError as exc:
            err.print(f"--shape: {exc}", markup=False)
            raise typer.Exit(2) from None
        steps = ladder_steps(package, backends=backend, dtypes=dtypes, quick=quick, shapes=shapes)
        with _progress(as_json) as make_task:
            advance = make_task(f"validating {spec.name}", steps)
            report = validate_package(
                package,
                backends=backend,
                dtypes=dtypes,
                quick=quick,
                progress=advance,
                shapes=shapes,
            )
    if as_json:
        out.print_json(json.dumps(report.to_json()))
    else:
        table = Table(title=f"{spec.name}: relative RMS error against the fp64 reference")
        for column in ("backend", "dtype", "B x T x H x K x V", "check"):
            table.add_column(column)
        table.add_column("rel. error", justify="right")
        table.add_column("tolerance", justify="right")
        table.add_column("result")
        for c in report.checks:
            verdict = "[green]ok[/]" if c.passed else "[bold red]FAIL[/]"
            table.add_row(
                c.backend,
                c.dtype,
                c.shape,
                c.quantity,
                f"{c.error:.2e}",
                f"{c.tolerance:.0e}",
                verdict,
            )
        out.print(table)
        for reason in report.skipped:
            out.print(f"skipped {reason}", markup=False)
        failed = sum(not c.passed for c in report.checks)
        out.print(f"{len(report.checks) - failed} passed, {failed} failed")
    if not report.passed:
        raise typer.Exit(1)


def _validate_exported(export_dir: Path, spec_path: Path | None, as_json: bool) -> None:
    """Drift first (exit 2, each edited file named), then the export's tests (exit 1)."""
    with _reported_errors():
        spec = load_spec(spec_path).spec if spec_path is not None else None
        problems = export_drift(export_dir, spec)
    if problems:
        for problem in problems:
            err.print(problem, markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    if not as_json:
        err.print(
            f"running the tests of {export_dir}: python -m pytest -q {export_dir / 'tests'}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    tests = run_exported_tests(export_dir)
    if as_json:
        document = {"export": str(export_dir), "drift": [], "tests": tests.to_json()}
        out.print_json(json.dumps(document))
    else:
        if not tests.passed:
            out.print(tests.output.rstrip(), markup=False, highlight=False, soft_wrap=True)
        verdict = "[green]passed[/]" if tests.passed else "[bold red]FAILED[/]"
        out.print(
            f"{escape(str(export_dir))}: no file edited since export; tests {verdict}",
            highlight=False,
            soft_wrap=True,
        )
        out.print(tests.summary, markup=False, highlight=False)
    if not tests.passed:
        raise typer.Exit(1)


@app.command()
def export(
    spec_path: SpecArg,
    out_dir: Annotated[
        Path, typer.Option("--out", help="The project folder to write (new, empty or a re-export).")
    ],
    name: Annotated[
        str | None,
        typer.Option("--name", help="The import package's name (default: the spec's name)."),
    ] = None,
    no_test: Annotated[
        bool, typer.Option("--no-test", help="Skip the quick ladder (tested_with: null).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a standalone pip-installable project: the package, pyproject.toml, README, tests."""
    with _reported_errors():
        try:
            with _progress(as_json) as make_task:
                result = export_spec(
                    spec_path, out_dir, name=name, test=not no_test, progress=make_task
                )
        except ExportTestFailed as exc:
            err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
            if exc.report is not None:
                for c in exc.report.checks:
                    if not c.passed:
                        err.print(
                            f"  FAIL {c.backend} {c.dtype} {c.shape} {c.quantity}: "
                            f"{c.error:.2e} > {c.tolerance:.0e}",
                            markup=False,
                            highlight=False,
                            soft_wrap=True,
                        )
            raise typer.Exit(1) from None
    if as_json:
        out.print_json(json.dumps({"exported": result.to_json()}))
        return
    verb = "re-exported" if result.replaced else "exported"
    out.print(
        f"{verb} [bold]{result.spec.name}[/] -> {escape(str(result.path))} (package {result.name})",
        highlight=False,
        soft_wrap=True,
    )
    for note in result.plan.notes:
        out.print(f"  - {note}", markup=False, highlight=False)
    tested = result.manifest["export"]["tested_with"]
    if result.report is None:
        out.print("  not tested (--no-test)", highlight=False)
    else:
        versions = ", ".join(f"{k} {v}" for k, v in tested.items() if v is not None)
        out.print(
            f"  quick ladder (float32): {len(result.report.checks)} checks passed with {versions}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    # pip reads a bare word as a distribution's name: give it a path.
    where = result.path if result.path.is_absolute() else f"./{result.path.as_posix()}"
    out.print(
        f"  install: pip install {where}; test: cd {result.path} && python -m pytest",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def inspect(
    spec_path: SpecArg,
    seq_len: Annotated[
        int, typer.Option("--seq-len", min=1, help="Sequence length the costs are for.")
    ] = DEFAULT_SEQ_LEN,
    batch: Annotated[
        int, typer.Option("--batch", min=1, help="Batch size the totals are for.")
    ] = 1,
    dot: Annotated[
        bool, typer.Option("--dot", help="Print Graphviz DOT (before, then after the passes) only.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show the IR before and after the passes, their rewrites, and the cost against attention."""
    with _reported_errors():
        spec = load_spec(spec_path).spec
        report = inspect_spec(spec, seq_len, batch)
    if as_json:
        out.print_json(json.dumps(report.to_json()))
    elif dot:
        typer.echo(report.dot_before.rstrip() + "\n" + report.dot_after.rstrip())
    else:
        render_report(report, out)


app.command(name="bench")(bench_command)


@contextmanager
def _progress(quiet: bool):
    """A progress bar on a terminal, plain lines elsewhere, nothing with --json."""
    if quiet or not err.is_terminal:

        def make_plain(description: str, total: int):
            count = [0]

            def advance(step: str) -> None:
                count[0] += 1
                if not quiet:
                    err.print(
                        f"[{count[0]}/{total}] {description}: {step}", markup=False, highlight=False
                    )

            return advance

        yield make_plain
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[step]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:

        def make_bar(description: str, total: int):
            task = progress.add_task(description, total=total, step="")
            started = [False]

            def advance(step: str) -> None:
                # Called as a step starts: complete the previous one.
                if started[0]:
                    progress.advance(task)
                started[0] = True
                progress.update(task, step=step)

            return advance

        yield make_bar
        for task in progress.tasks:
            progress.update(task.id, completed=task.total, step="done")
