"""The tables of grid.md: each cell, what caching adds to each base RNN, and whether the
runs behind a score had stopped rising."""

from __future__ import annotations

import math
from collections.abc import Sequence

from mcgen.search.grid.cells import Cell, seed_std
from mcgen.search.objective import Run, short_slice


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _fmt_bytes(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4g}"


def cells_table(cells: Sequence[Cell], slices: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    header = ["base", "variant", "width", "accuracy (mean +- std)", "seeds", "by seed"]
    header += ["sweep mean", "best lr", "lr range", "runs ended (best lr)", "decode state bytes"]
    header += [*map(short_slice, slices), "trial"]
    rows = []
    for cell in cells:
        row = [cell.base, cell.variant, str(cell.width)]
        seeds = len(cell.best_runs)
        # One seed has no spread to show (its std of 0 would read as a certain score).
        spread = f" +- {cell.spread:.3f}" if seeds > 1 else ""
        row += [f"{cell.accuracy:.3f}{spread}", str(seeds)]
        row += [" / ".join(f"{a:.2f}" for a in cell.seed_accuracies())]
        row += [f"{cell.sweep_accuracy():.3f}"]
        row += [f"{cell.best_lr:g}", cell.lr_status, cell.stops()]
        row += [_fmt_bytes(cell.decode_state_bytes)]
        for key in slices:
            spread = seed_std(cell.slice_accuracies(key)) if seeds > 1 else math.nan
            shown = f"{cell.per_slice.get(key, math.nan):.3f}"
            row.append(shown if math.isnan(spread) else f"{shown} +- {spread:.3f}")
        row += [str(cell.number)]
        rows.append(row)
    return header, rows


def _difference(variant: Sequence[float], plain: Sequence[float]) -> tuple[float, float | None]:
    """(mean of variant - mean of plain, its standard error: each mean's std / sqrt(seeds),
    combined); no error when a side has one seed: a zero would call any gain real."""
    gain = sum(variant) / len(variant) - sum(plain) / len(plain)
    if min(len(variant), len(plain)) < 2:
        return gain, None
    error = math.sqrt(seed_std(variant) ** 2 / len(variant) + seed_std(plain) ** 2 / len(plain))
    return gain, error


def gains_table(
    cells: Sequence[Cell], slices: Sequence[str] = ()
) -> tuple[list[str], list[list[str]]]:
    """Each cached variant against its base RNN (same recurrence and width): the difference
    of their means, with its standard error, and how many of its seeds beat the base RNN's
    best seed; with several test slices, the difference on each too. Rows only where both
    were run."""
    header = ["base", "width", "base RNN", "variant", "accuracy", "gain (+- s.e.)", "> 2 s.e."]
    header += ["seeds above the base RNN's best"]
    each = list(slices) if len(slices) > 1 else []
    header += [f"gain {short_slice(key)}" for key in each]
    rows = []
    for plain in (c for c in cells if c.base_rnn):
        plain_best = max(plain.seed_accuracies(), default=math.nan)
        for cell in cells:
            if cell.base_rnn or (cell.base, cell.width) != (plain.base, plain.width):
                continue
            above = sum(a > plain_best for a in cell.seed_accuracies())
            row = [cell.base, str(cell.width), f"{plain.accuracy:.3f}", cell.variant]
            row += [f"{cell.accuracy:.3f}"]
            gain, error = _difference(cell.seed_accuracies(), plain.seed_accuracies())
            if error is None:
                row += [f"{gain:+.3f} (one seed: no s.e.)", "-"]
            else:
                row += [f"{gain:+.3f} +- {error:.3f}", "yes" if abs(gain) > 2 * error else "no"]
            row += [f"{above} of {len(cell.best_runs)}"]
            for key in each:
                gain, error = _difference(cell.slice_accuracies(key), plain.slice_accuracies(key))
                row.append(f"{gain:+.3f}" + ("" if error is None else f" +- {error:.3f}"))
            rows.append(row)
    return header, rows


def rise_after(run: Run, step: int) -> float | None:
    """How much a run's best accuracy grew after `step`: its best over the whole run minus
    its best up to that step (None when it ended by then or had no evaluation before)."""
    before = [accuracy for at, accuracy in run.curve if at <= step]
    if run.steps <= step or not before:
        return None
    return max(accuracy for _, accuracy in run.curve) - max(before)


def rise_table(cells: Sequence[Cell], budget: int) -> tuple[list[str], list[list[str]]]:
    """Whether the runs behind each score had stopped rising: for each of the best rate's
    runs that trained to the step budget, what its best accuracy gained over the budget's
    last quarter. Runs that met the target stopped with nothing left to gain; cells with
    none at the budget have no row."""
    since = budget - budget // 4
    header = ["base", "variant", "width", "runs at the budget"]
    header += [f"rise after step {since} (by seed)", "largest"]
    rows = []
    for cell in cells:
        at_budget = [run for run in cell.best_runs if run.stop_reason == "budget"]
        rises = [rise for run in at_budget if (rise := rise_after(run, since)) is not None]
        if not rises:
            continue
        row = [cell.base, cell.variant, str(cell.width)]
        row += [f"{len(at_budget)} of {len(cell.best_runs)}"]
        rows.append(row + [" / ".join(f"{r:+.2f}" for r in rises), f"{max(rises):+.3f}"])
    return header, rows
