"""`mcgen search`: a thin command layer over mcgen.search.local_run, .report, .status and
.depth.

    mcgen search SPACE.yaml [--study NAME] [--trials N] [--workers N] [--storage URL]
                            [--timeout S] [--json]       (same as `mcgen search run ...`)
    mcgen search report STUDY [--storage URL] [--out DIR] [--json]
    mcgen search status STUDY [--storage URL] [--runs DIR] [--json]
    mcgen search depth STUDY [--trial N] [--seed S ...] [--storage URL] [--runs DIR] [--out DIR]
                          [--json]

Heavy modules (optuna, torch) are imported inside the commands, so that registering
this sub-app keeps every other mcgen command quick to start.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from mcgen.console import CommandError, err, out, reported_errors

if TYPE_CHECKING:  # the search modules load only when a command needs them
    from mcgen.search.objective import Run


class _SearchGroup(TyperGroup):
    """`mcgen search SPACE.yaml ...` runs a search: an argument that names no
    subcommand (a space file, or an option) is read as `run`'s."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


search_app = typer.Typer(
    cls=_SearchGroup,
    help=(
        "Multi-objective search over memory-caching specs, scored on MQAR recall: "
        "`mcgen search SPACE.yaml` runs (or continues) a study, "
        "`mcgen search report STUDY` writes its Pareto front."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document for machines.")]
StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="A database URL (postgresql://user@host:port/db) shared by many machines; "
        "default: the journal file runs/<study>/journal.log.",
    ),
]
RunsOpt = Annotated[Path, typer.Option("--runs", help="The folder of studies (runs/<study>/).")]


@contextmanager
def _reported_errors() -> Iterator[None]:
    """mcgen.console's: spec problems and the search's own errors of bad input, exit code
    2; a database that stayed out past the retries, its one line and exit code 1."""
    from mcgen.search.database import DatabaseUnavailable
    from mcgen.search.errors import SearchError
    from mcgen.search.objective import HardwareUnavailable

    with reported_errors(SearchError, HardwareUnavailable):
        try:
            yield
        except DatabaseUnavailable as exc:
            raise CommandError(str(exc), exit_code=1) from None  # JSON too with --json


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _print_table(table: Table) -> None:
    # Wide enough not to wrap in a log or a pipe; a terminal keeps its own width.
    (out if out.is_terminal else Console(width=240)).print(table)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@contextmanager
def _progress_display(quiet: bool) -> Iterator[Any]:
    """A callback for run_study's snapshots: a rich bar (trials done / total, best
    accuracy) on a terminal, one plain line per finished trial elsewhere, nothing
    with --json."""
    if quiet:
        yield None
        return

    def lines(snapshot: Any) -> Iterator[str]:
        finished = snapshot.finished
        done = snapshot.counts.done - sum(t.state in ("COMPLETE", "PRUNED") for t in finished)
        for trial in snapshot.finished:
            where = f" (worker {trial.worker})" if trial.worker is not None else ""
            if trial.accuracy is not None:
                what = f"accuracy {trial.accuracy:.4f}, cost {trial.cost:.4g}"
            else:
                what = trial.state.lower()
            if trial.state in ("COMPLETE", "PRUNED"):
                done += 1
            yield (
                f"[{done}/{snapshot.target}] trial {trial.number} [{trial.label}]: {what}{where}"
            )

    if not err.is_terminal:

        def plain(snapshot: Any) -> None:
            for text in lines(snapshot):
                err.print(text, markup=False, highlight=False, soft_wrap=True)

        yield plain
        return

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("best {task.fields[best]}"),
        TextColumn("attention {task.fields[attention]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        task = None

        def bar(snapshot: Any) -> None:
            nonlocal task
            best, attention = _fmt(snapshot.best_accuracy), _fmt(snapshot.attention_accuracy)
            if task is None:
                task = progress.add_task(
                    "search", total=snapshot.target, best=best, attention=attention
                )
            for text in lines(snapshot):
                progress.console.print(text, markup=False, highlight=False)
            progress.update(
                task,
                completed=min(snapshot.counts.done, snapshot.target),
                best=best,
                attention=attention,
            )

        yield bar


@search_app.command("run")
def run(
    space: Annotated[Path, typer.Argument(help="A search-space file, e.g. search/tiny.yaml.")],
    study: Annotated[
        str | None, typer.Option("--study", help="The study's name (default: the space's).")
    ] = None,
    trials: Annotated[
        int,
        typer.Option(
            "--trials", min=1, help="Trials the study should have done, reference points included."
        ),
    ] = 20,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Local worker processes (one thread each).")
    ] = 1,
    storage: StorageOpt = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0, help="Start no trial after this many seconds."),
    ] = None,
    runs: RunsOpt = Path("runs"),
    reuse_runs: Annotated[
        Path | None,
        typer.Option(
            "--reuse-runs",
            help="A study's journal file (runs/<study>/journal.log) run with the same space "
            "but for train.full_budget_at_best: its finished runs are taken, not trained again.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a study (or continue it: the same command resumes) until it has --trials done."""
    _quiet_optuna()
    from mcgen.search.local_run import RunOptions, run_study
    from mcgen.search.worker import interrupt_exit_code

    with _reported_errors():
        try:
            options = RunOptions(
                trials=trials,
                study=study,
                workers=workers,
                storage=storage,
                timeout=timeout,
                runs_dir=runs,
                reuse_runs=reuse_runs,
            )
            with _progress_display(as_json) as on_update:
                summary = run_study(space, options, on_update=on_update)
        except KeyboardInterrupt as interrupt:
            err.print("interrupted: rerun the same command to continue the study")
            raise typer.Exit(interrupt_exit_code(interrupt)) from None
    failing = [w for w in summary.workers if w.returncode != 0]
    if as_json:
        out.print_json(json.dumps(summary.to_json()))
    else:
        c = summary.counts
        minutes = summary.seconds / 60
        out.print(
            f"study {escape(summary.study)}: {c.done}/{summary.target} trials done "
            f"({c.pruned} pruned over budget, {c.failed_label}) in {minutes:.1f} min; "
            f"best accuracy {_fmt(summary.best_accuracy)} "
            f"(attention {_fmt(summary.attention_accuracy)})",
            highlight=False,
            soft_wrap=True,
        )
        if summary.reused:
            out.print(f"  {summary.reused} finished runs taken from --reuse-runs", highlight=False)
        if summary.recovered:
            out.print(
                f"  trials {', '.join(map(str, summary.recovered))} were left running by a "
                "worker that ended: failed and enqueued again",
                highlight=False,
            )
        for worker in failing:
            err.print(
                f"worker {worker.index} exited with {worker.returncode}; its log: {worker.log}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            tail = worker.log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
            err.print("\n".join(tail), markup=False, highlight=False, soft_wrap=True)
        if not summary.finished and summary.timed_out:
            out.print("  stopped by --timeout: rerun the same command to continue")
        where = f" --storage {summary.storage}" if storage else ""
        if runs != Path("runs"):
            where += f" --runs {runs}"
        out.print(
            f"  report: mcgen search report {summary.study}{where}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if not summary.finished and not summary.timed_out:
        raise typer.Exit(1)


@search_app.command("report")
def report(
    study: Annotated[str, typer.Argument(help="The study's name (runs/<study>/journal.log).")],
    storage: StorageOpt = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Where to write it (default: runs/<study>/).")
    ] = None,
    runs: RunsOpt = Path("runs"),
    extrapolate: Annotated[
        Path | None,
        typer.Option(
            "--extrapolate",
            help="A space file (the full study of this pilot): estimate its cost from this "
            "study's timings, in grid.md.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write the Pareto front: table, plot (PNG; HTML with plotly), report.md, report.json
    and one spec file per Pareto candidate (specs/<name>.yaml, for `mcgen build`); for a
    grid or a study with seeds, grid.md: accuracy by base, variant and width with spreads,
    its plots and the learning curves."""
    _quiet_optuna()
    from mcgen.search.report import report_study, table_rows

    with _reported_errors():
        result = report_study(
            study, storage=storage, runs_dir=runs, out=out_dir, extrapolate=extrapolate
        )
    if as_json:
        out.print_json(json.dumps(json.loads(Path(result.files["json"]).read_text())))
        return
    header, rows = table_rows(result)
    table = Table(
        title=f"{escape(result.study)}: Pareto front (accuracy up, {result.cost} down) "
        f"and reference points"
    )
    for name in header:
        justify = (
            "right"
            if name not in ("role", "aggregation", "segments", "init", "recurrence")
            else "left"
        )
        table.add_column(escape(name), justify=justify)
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    _print_table(table)
    c = result.counts
    out.print(
        f"{c.done} trials done ({c.complete} complete, {c.pruned} pruned), {c.failed_label}; "
        f"cost: {result.cost_label} at T = {result.test_length}",
        highlight=False,
        soft_wrap=True,
    )
    for key in ("md", "json", "png", "html", "grid_md"):
        if key in result.files:
            out.print(f"  {key}: {result.files[key]}", markup=False, highlight=False)
    for spec in result.files.get("specs", []):
        out.print(f"  spec: {spec}", markup=False, highlight=False)
    for note in result.notes:
        out.print(f"  {note}", markup=False, highlight=False, soft_wrap=True)


@search_app.command("status")
def status(
    study: Annotated[str, typer.Argument(help="The study's name (runs/<study>/journal.log).")],
    storage: StorageOpt = None,
    runs: RunsOpt = Path("runs"),
    trial: Annotated[
        int | None,
        typer.Option(
            "--trial",
            help="List this trial's finished runs instead: rate, seed, steps, how each "
            "ended, its accuracy on each test slice.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Where a study stands, safe beside its workers: each trial's state, the runs it holds
    so far (a waiting re-run: its earlier tries'), its score once complete."""
    _quiet_optuna()
    from mcgen.search.status import study_status, trial_runs

    if trial is not None:
        with _reported_errors():
            label, held = trial_runs(study, trial, storage=storage, runs_dir=runs)
        _print_runs(study, trial, label, held, as_json)
        return
    with _reported_errors():
        result = study_status(study, storage=storage, runs_dir=runs)
    if as_json:
        out.print_json(json.dumps(result.to_json()))
        return
    table = Table(title=f"{escape(result.study)} ({escape(result.storage)})")
    left = ("candidate", "state", "note")
    for name in ("trial", "candidate", "state", "runs (final)", "best run", "score", "note"):
        table.add_column(name, justify="left" if name in left else "right")
    for t in result.trials:
        note = ""
        if t.retried_as is not None:
            note = f"run again as {t.retried_as}"
        elif t.retry_of is not None:
            note = f"runs {t.retry_of} again"
        if t.started is not None:
            note = " ".join(filter(None, [note, f"since {t.started:%H:%M}"]))
        for key, step in t.under_way.items():
            note += f"; {key} at step {step}"
        score = "-" if t.accuracy is None else f"{t.accuracy:.3f} +- {t.spread:.3f}"
        table.add_row(
            str(t.number),
            escape(t.label),
            t.state,
            f"{t.runs} ({t.finals})" if t.runs else "-",
            "-" if t.best_run is None else f"{t.best_run:.3f}",
            score,
            note,
        )
    _print_table(table)
    c = result.counts
    line = (
        f"{c.complete} complete, {c.pruned} pruned, {c.running} running, {c.waiting} waiting, "
        f"{c.failed_label}; its runs so far: {result.run_hours:.2f} worker-hours"
    )
    if result.hours_left is not None and result.unfinished:
        line += (
            f"; left, roughly: {result.hours_left:.1f} worker-hours (each unfinished trial "
            "at the mean of the complete ones of its base and width, or of others scaled by "
            "its step time, less the runs it holds)"
        )
    out.print(line, highlight=False, soft_wrap=True)


def _print_runs(study: str, number: int, label: str, held: list[Run], as_json: bool) -> None:
    """`mcgen search status --trial`: one row per run (objective.Run), sweep runs first."""
    from mcgen.search.objective import short_slice

    if as_json:
        payload = {"study": study, "trial": number, "label": label}
        out.print_json(json.dumps({**payload, "runs": [run.to_json() for run in held]}))
        return
    slices = list(dict.fromkeys(key for run in held for key in run.per_slice))
    table = Table(title=f"{escape(study)}: trial {number} ({escape(label)})")
    for name in ("run", "lr", "seed", "steps", "ended", "accuracy"):
        table.add_column(name, justify="left" if name in ("run", "ended") else "right")
    for key in slices:
        table.add_column(short_slice(key), justify="right")
    table.add_column("seconds", justify="right")
    for run in held:
        table.add_row(
            "final" if run.final else "sweep",
            f"{run.lr:g}",
            str(run.seed),
            str(run.steps),
            run.stop_reason,
            f"{run.accuracy:.3f}",
            *(f"{run.per_slice[key]:.3f}" if key in run.per_slice else "-" for key in slices),
            f"{run.seconds:.0f}",
        )
    _print_table(table)
    out.print(f"{len(held)} finished runs", highlight=False)


@search_app.command("depth")
def depth(
    study: Annotated[str, typer.Argument(help="A needle study (runs/<study>/journal.log).")],
    trial: Annotated[
        int | None,
        typer.Option(
            "--trial",
            help="Train this trial's scored runs again (default: none; only redraw the "
            "report from the runs in --out).",
        ),
    ] = None,
    seeds: Annotated[
        list[int] | None,
        typer.Option("--seed", help="One seed of the trial's runs (repeat it; default: all)."),
    ] = None,
    storage: StorageOpt = None,
    runs: RunsOpt = Path("runs"),
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Where the runs' counts and the report go (default: runs/<study>/depth/)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Where a needle study's models lose the needle: train a trial's scored runs again
    (bit for bit the study's, checked against its journal) and score each test slice by
    the needle's depth; depth.md and depth.png hold every run done so far."""
    _quiet_optuna()
    from mcgen.search.depth import DEPTH_DIR, probe
    from mcgen.search.depth_report import write_depth_report

    def said(run: Any) -> None:
        verdict = "scored as in the journal" if run.reproduced else "NOT as in the journal"
        out.print(
            f"trial {run.trial} seed {run.seed} ({run.label}): best evaluation at step "
            f"{run.step}, {verdict}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    target = out_dir if out_dir is not None else runs / study / DEPTH_DIR
    with _reported_errors():
        done = []
        if trial is not None:
            done = probe(
                study,
                trial,
                seeds,
                storage=storage,
                runs_dir=runs,
                out=target,
                on_run=None if as_json else said,
                progress=not as_json,
            )
        files = write_depth_report(target, study)
    if as_json:
        out.print_json(json.dumps({"runs": [run.to_json() for run in done], "files": files}))
        return
    for key, path in files.items():
        out.print(f"  {key}: {path}", markup=False, highlight=False, soft_wrap=True)
