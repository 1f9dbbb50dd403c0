"""What every mcgen command shares on the terminal: the stdout and stderr consoles, bad
input reported as a message and an exit code (a JSON object with --json), and progress
bars. mcgen.cli and its subcommands (mcgen.bench.cli, mcgen.search.cli) import it; it
imports none of them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mcgen.export import ExportError
from mcgen.packages import PackageError
from mcgen.spec import SpecError, SpecProblem

out = Console()
err = Console(stderr=True)

# Whether the command running prints JSON (--json among its arguments): its errors too.
_json_output: ContextVar[bool] = ContextVar("mcgen_json_output", default=False)

# A task's `advance(step)`, called as each step starts; `make_task(description, total)`.
Advance = Callable[[str], None]
MakeTask = Callable[[str, int], Advance]


class CommandError(Exception):
    """Input a command refuses: its message (one line or more) and exit code, reported by
    reported_errors as plain text on stderr, or with --json as a JSON object on stdout."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


@contextmanager
def json_errors(enabled: bool) -> Iterator[None]:
    """Within: errors are reported as JSON on stdout (enabled) or as text on stderr."""
    token = _json_output.set(enabled)
    try:
        yield
    finally:
        _json_output.reset(token)


@contextmanager
def reported_errors(*also: type[Exception]) -> Iterator[None]:
    """Bad input ends the command with its message and exit code 2 (a CommandError's own
    code), never a traceback; with --json, as a JSON object on stdout.

    `also`: a subcommand's own errors of bad input, reported the same way."""
    try:
        yield
    except SpecError as exc:
        report_error(str(exc), 2, exc.problems)
        raise typer.Exit(2) from None
    except CommandError as exc:
        report_error(str(exc), exc.exit_code)
        raise typer.Exit(exc.exit_code) from None
    except (PackageError, ExportError, *also) as exc:
        report_error(str(exc), 2)
        raise typer.Exit(2) from None


def report_error(message: str, exit_code: int, problems: Sequence[SpecProblem] = ()) -> None:
    """An error: {"error": {message, exit_code[, problems]}} on stdout with --json, else its
    lines on stderr, never wrapped (editors and scripts parse `file:line:col:` lines)."""
    if not _json_output.get():
        err.print(message, markup=False, highlight=False, soft_wrap=True)
        return
    error: dict[str, Any] = {"message": message, "exit_code": exit_code}
    if problems:
        error["problems"] = [asdict(problem) for problem in problems]
    out.print_json(json.dumps({"error": error}))


@contextmanager
def progress_bars(quiet: bool) -> Iterator[MakeTask]:
    """A progress bar on a terminal, plain lines elsewhere, nothing with --json."""
    if quiet or not err.is_terminal:
        yield _plain_tasks(quiet)
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[step]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        yield _bar_tasks(progress)
        for task in progress.tasks:
            progress.update(task.id, completed=task.total, step="done")


def _plain_tasks(quiet: bool) -> MakeTask:
    """Tasks that print one numbered line per step on stderr (none when quiet)."""

    def make_plain(description: str, total: int) -> Advance:
        count = [0]

        def advance(step: str) -> None:
            count[0] += 1
            if not quiet:
                line = f"[{count[0]}/{total}] {description}: {step}"
                err.print(line, markup=False, highlight=False, soft_wrap=True)

        return advance

    return make_plain


def _bar_tasks(progress: Progress) -> MakeTask:
    """Tasks shown as bars of `progress`, the running step's name beside each."""

    def make_bar(description: str, total: int) -> Advance:
        task = progress.add_task(description, total=total, step="")
        started = [False]

        def advance(step: str) -> None:
            # Called as a step starts: complete the previous one.
            if started[0]:
                progress.advance(task)
            started[0] = True
            progress.update(task, step=step)

        return advance

    return make_bar
