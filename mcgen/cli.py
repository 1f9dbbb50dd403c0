"""The `mcgen` command line: a thin layer over mcgen.build, .validate, .export and
.inspect_report, with `mcgen bench` (mcgen.bench.cli) and `mcgen search` (mcgen.search.cli)
registered on it. Consoles, error reports and progress bars: mcgen.console."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from mcgen import __version__
from mcgen.bench.cli import bench as bench_command
from mcgen.build import DEFAULT_OUT, build_command, render_spec
from mcgen.console import (
    CommandError,
    err,
    json_errors,
    out,
    progress_bars,
    report_error,
    reported_errors,
)
from mcgen.export import (
    ExportTestFailed,
    export_drift,
    export_spec,
    run_exported_tests,
)
from mcgen.inspect_report import inspect_spec, render_report
from mcgen.kernels.report import render_kernel_report
from mcgen.kernels.run import KernelReportError, report_from_options
from mcgen.packages import check_replaceable
from mcgen.passes.pipeline import DEFAULT_SEQ_LEN
from mcgen.search.cli import search_app
from mcgen.spec import SpecError, load_spec
from mcgen.tables import print_table
from mcgen.validate import (
    DEFAULT_DTYPES,
    find_package,
    ladder_steps,
    open_package,
    parse_shapes,
    shape_warnings,
    validate_package,
)


class _Commands(TyperGroup):
    """mcgen's commands. With --json, every error is one JSON object on stdout, usage
    errors (an unknown option, a value out of range) included."""

    def invoke(self, ctx: typer.Context) -> Any:
        # ctx.args: the arguments after the command's name, before click consumes them.
        as_json = "--json" in ctx.args
        with json_errors(as_json):
            try:
                return super().invoke(ctx)
            except Exception as exc:
                if not (as_json and _is_usage_error(exc)):
                    raise
                report_error(exc.format_message(), exc.exit_code)  # type: ignore[attr-defined]
                raise typer.Exit(exc.exit_code) from None  # type: ignore[attr-defined]


def _is_usage_error(exc: Exception) -> bool:
    """click's usage errors, seen by what they carry: typer >= 0.29 vendors click (it
    cannot be imported), older versions use click's own."""
    return isinstance(getattr(exc, "exit_code", None), int) and hasattr(exc, "format_message")


app = typer.Typer(
    cls=_Commands,
    help=(
        "mcgen: build, validate, inspect and export memory-caching sequence models from YAML specs."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(search_app, name="search")

SpecArg = Annotated[Path, typer.Argument(help="A spec file (YAML), e.g. specs/grm.yaml.")]
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help='Print one JSON document on stdout for machines; an error is {"error": {...}} '
        "there, with the same exit code.",
    ),
]


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


@app.command()
def build(
    specs: Annotated[list[Path], typer.Argument(help="One or more spec files.")],
    out_dir: Annotated[
        Path, typer.Option("--out", help="Where packages go: OUT/<name>/.")
    ] = DEFAULT_OUT,
    as_json: JsonOpt = False,
) -> None:
    """Generate each spec's package in OUT/<name>/ (all specs are checked before any is written)."""
    with reported_errors():
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
            raise CommandError(
                f"two specs share the name {', '.join(clashes)}: each names one package"
            )
        for _, _, package in rendered:  # no spec is written if any target is refused
            check_replaceable(out_dir / package.name, package.name)
        results = []
        for (spec, plan, package), spec_path in zip(rendered, specs, strict=True):
            path = package.write(out_dir)
            results.append(
                {"spec": str(spec_path), "package": str(path), "notes": list(plan.notes)}
            )
            if not as_json:
                out.print(
                    f"built [bold]{spec.name}[/] -> {escape(str(path))}",
                    highlight=False,
                    soft_wrap=True,
                )
                for note in plan.notes:
                    out.print(f"  - {note}", markup=False, highlight=False, soft_wrap=True)
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
    with reported_errors():
        if spec_path is None:
            raise CommandError(
                "give a SPEC to validate its package, or --exported DIR for an export"
            )
        dtypes = tuple(dtype or DEFAULT_DTYPES)
        bad = [d for d in dtypes if d not in ("float64", "float32", "bfloat16")]
        if bad:
            raise CommandError(
                f"--dtype must be float64, float32 or bfloat16, got {', '.join(bad)}"
            )
        spec = load_spec(spec_path).spec
        package = open_package(find_package(spec, spec_path, package_dir, DEFAULT_OUT), spec)
        try:
            shapes = parse_shapes(package, shape or [])
        except ValueError as exc:
            raise CommandError(f"--shape: {exc}") from None
        if not as_json:
            # Said before the run: a shape that misses the spec's features still runs.
            for warning in shape_warnings(package, quick=quick, shapes=shapes):
                err.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
        steps = ladder_steps(package, backends=backend, dtypes=dtypes, quick=quick, shapes=shapes)
        with progress_bars(as_json) as make_task:
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
        print_table(out, table)
        for reason in report.skipped:
            out.print(f"skipped {reason}", markup=False, highlight=False, soft_wrap=True)
        failed = sum(not c.passed for c in report.checks)
        out.print(f"{len(report.checks) - failed} passed, {failed} failed")
    if not report.passed:
        raise typer.Exit(1)


def _validate_exported(export_dir: Path, spec_path: Path | None, as_json: bool) -> None:
    """Drift first (exit 2, each edited file named), then the export's tests (exit 1)."""
    with reported_errors():
        spec = load_spec(spec_path).spec if spec_path is not None else None
        problems = export_drift(export_dir, spec)
        if problems:
            raise CommandError("\n".join(problems))
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
        out.print(tests.summary, markup=False, highlight=False, soft_wrap=True)
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
    model: Annotated[
        bool,
        typer.Option(
            "--model",
            help="Add a Hugging Face model family (NAME/hf.py: config, model, causal LM, cache; "
            "the project's [hf] extra installs transformers) and its tests.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a standalone pip-installable project: the package, pyproject.toml, README, tests."""
    with reported_errors():
        try:
            with progress_bars(as_json) as make_task:
                result = export_spec(
                    spec_path,
                    out_dir,
                    name=name,
                    test=not no_test,
                    progress=make_task,
                    model=model,
                )
        except ExportTestFailed as exc:
            failed = [] if exc.report is None else [c for c in exc.report.checks if not c.passed]
            lines = [
                f"  FAIL {c.backend} {c.dtype} {c.shape} {c.quantity}: "
                f"{c.error:.2e} > {c.tolerance:.0e}"
                for c in failed
            ]
            raise CommandError("\n".join([str(exc), *lines]), exit_code=1) from None
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
        out.print(f"  - {note}", markup=False, highlight=False, soft_wrap=True)
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
    kernels: Annotated[
        bool,
        typer.Option(
            "--kernels",
            help="Compile the Triton kernels for a GPU (none needed) as a run launches them; "
            "report registers, spills, shared memory, dot lowering, cost and roofline; exit 1 "
            "when a check fails.",
        ),
    ] = False,
    arch: Annotated[
        str | None, typer.Option("--arch", help="With --kernels: sm_90 (default) or sm_80.")
    ] = None,
    shape: Annotated[
        str | None,
        typer.Option("--shape", help="With --kernels: BxTxHxKxV (default 1x32768x16x128x128)."),
    ] = None,
    kernel_dtype: Annotated[
        str | None,
        typer.Option("--dtype", help="With --kernels: bfloat16 (default), float16 or float32."),
    ] = None,
    card: Annotated[
        str | None,
        typer.Option("--card", help="With --kernels: h100, h200 or a100 for the roofline."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the IR before and after the passes, their rewrites, and the cost against attention."""
    if kernels or any(o is not None for o in (arch, shape, kernel_dtype, card)):
        with reported_errors(KernelReportError), progress_bars(as_json) as make_task:
            kernel_report = report_from_options(
                spec_path, kernels=kernels, arch=arch, shape=shape, dtype=kernel_dtype,
                card=card, progress=make_task,
            )  # fmt: skip
        if as_json:
            out.print_json(json.dumps(kernel_report.to_json()))
        else:
            render_kernel_report(kernel_report, out)
        if kernel_report.problems():
            raise typer.Exit(1)
        return
    with reported_errors():
        spec = load_spec(spec_path).spec
        report = inspect_spec(spec, seq_len, batch)
    if as_json:
        out.print_json(json.dumps(report.to_json()))
    elif dot:
        typer.echo(report.dot_before.rstrip() + "\n" + report.dot_after.rstrip())
    else:
        render_report(report, out)


app.command(name="bench")(bench_command)

if __name__ == "__main__":  # python -m mcgen.cli, as well as the `mcgen` script
    app()
