"""The plots of grid.md: accuracy against width, against decode state bytes and on each
test slice, and the learning curves."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from mcgen.search.grid.cells import ATTENTION, Cell, Guess, seed_std
from mcgen.search.objective import short_slice


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bases(cells: Sequence[Cell]) -> list[str]:
    return list(dict.fromkeys(c.base for c in cells if c.base != ATTENTION))


def _variants(cells: Sequence[Cell]) -> list[str]:
    return list(dict.fromkeys(c.variant for c in cells if c.base != ATTENTION))


def legend_entries(axes) -> tuple[list, list[str]]:
    """(handles, labels) of every line drawn in any of the axes, each label once, in the
    order first drawn: one legend for panels that each hold only some of the lines."""
    entries: dict[str, object] = {}
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    return list(entries.values()), list(entries)


def _draw_guess(axis, guess: Guess) -> None:
    axis.axhline(guess.accuracy, color="grey", linestyle=":", linewidth=1, label="guess")


def plot_accuracy_against(
    cells: Sequence[Cell], path: Path, *, x: str, title: str, guess: Guess
) -> Path:
    """One panel per base, one line per variant (mean +- std over seeds as error bars, each
    seed a dot beside it), attention dashed, the guess dotted; x is "width" (the variants
    side by side, a little apart) or "decode_state_bytes" (log scale)."""
    plt = pyplot()
    from matplotlib import ticker

    bases = _bases(cells) or [ATTENTION]
    figure, axes = plt.subplots(1, len(bases), figsize=(4.2 * len(bases), 3.8), dpi=120)
    axes = [axes] if len(bases) == 1 else list(axes)
    attention = sorted((c for c in cells if c.base == ATTENTION), key=lambda c: c.width)
    variants = _variants(cells)
    widths = sorted({c.width for c in cells})
    # Side by side at each width, the lines spanning a sixth of the gap between widths.
    gap = min((b - a for a, b in zip(widths, widths[1:], strict=False)), default=8)
    lines = [(variant, f"C{i}", "-", "o") for i, variant in enumerate(variants)]
    lines.append((ATTENTION, "black", "--", "*"))
    for axis, base in zip(axes, bases, strict=True):
        for i, (variant, colour, style, marker) in enumerate(lines):
            line = (
                attention
                if variant == ATTENTION
                else [c for c in cells if c.base == base and c.variant == variant]
            )
            if not line:
                continue
            line = sorted(line, key=lambda c: getattr(c, x))
            if x == "width":
                apart = gap / 6 / max(len(lines) - 1, 1)
                where = [c.width + (i - (len(lines) - 1) / 2) * apart for c in line]
                beside = [at + apart / 3 for at in where]
            else:
                where = [c.decode_state_bytes for c in line]
                beside = [at * 1.05 for at in where]
            axis.errorbar(
                where,
                [c.accuracy for c in line],
                yerr=[c.spread for c in line],
                color=colour,
                linestyle=style,
                marker=marker,
                capsize=3,
                label=variant,
            )
            seeds = [
                (at, a) for at, c in zip(beside, line, strict=True) for a in c.seed_accuracies()
            ]
            if seeds:  # a cell loaded from an older journal may hold no runs
                axis.scatter(*zip(*seeds, strict=True), color=colour, s=9, alpha=0.45, linewidths=0)
        _draw_guess(axis, guess)
        if x == "decode_state_bytes":
            axis.set_xscale("log")
            # Ticks at 1, 2 and 5 of each decade, in kB: a panel may span less than a decade.
            axis.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.xaxis.set_major_formatter(ticker.EngFormatter(unit="B"))
            axis.xaxis.set_minor_formatter(ticker.NullFormatter())
        else:
            axis.set_xticks(widths)
        axis.set_title(base)
        axis.set_xlabel("d_model" if x == "width" else "decode state (whole model)")
        axis.set_ylim(-0.02, 1.02)
        axis.grid(True, alpha=0.3)
    axes[0].set_ylabel("test accuracy (mean +- std; dots: seeds)")
    axes[-1].legend(*legend_entries(axes), fontsize=7, loc="best")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
    return path


def _panels(plt, bases: int, widths: int):
    """(figure, panels[base][width]): a row per base and a column per width, or one row of
    bases when there is one width (a column of them would be tall and narrow)."""
    if widths == 1:
        figure, row = plt.subplots(1, bases, figsize=(4 * bases, 3.2), dpi=110, squeeze=False)
        return figure, [[axis] for axis in row[0]]
    figure, grid = plt.subplots(
        bases, widths, figsize=(4 * widths, 3 * bases), dpi=110, squeeze=False
    )
    return figure, [list(row) for row in grid]


def _label(panels, x: str, y: str) -> None:
    """The x label under each column of _panels' figure, the y label at each row's start."""
    if all(len(row) == 1 for row in panels):  # one width: the panels are one row
        for row in panels:
            row[0].set_xlabel(x)
        panels[0][0].set_ylabel(y)
        return
    for axis in panels[-1]:
        axis.set_xlabel(x)
    for row in panels:
        row[0].set_ylabel(y)


def _per_panel(
    cells: Sequence[Cell], path: Path, labels: tuple[str, str], draw_cell, finish_panel
) -> Path:
    """A figure of one panel per (base, width) (_panels), attention in every panel of its
    width: draw_cell(axis, cell, name, colour) draws each cell, finish_panel(axis) what a
    panel adds (the guess); written to path as PNG."""
    plt = pyplot()
    bases = _bases(cells) or [ATTENTION]
    widths = sorted({c.width for c in cells})
    figure, grid = _panels(plt, len(bases), len(widths))
    colours = {v: f"C{i}" for i, v in enumerate(_variants(cells))}
    colours[ATTENTION] = "black"
    for row, base in enumerate(bases):
        for column, width in enumerate(widths):
            axis = grid[row][column]
            for cell in cells:
                if cell.width == width and cell.base in (base, ATTENTION):
                    name = ATTENTION if cell.base == ATTENTION else cell.variant
                    draw_cell(axis, cell, name, colours[name])
            finish_panel(axis)
            axis.set_title(f"{base}, d_model {width}", fontsize=9)
            axis.set_ylim(-0.02, 1.02)
            axis.grid(True, alpha=0.3)
            axis.legend(fontsize=6, loc="best")
    _label(grid, *labels)
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
    return path


def plot_curves(cells: Sequence[Cell], path: Path, guess: Guess) -> Path:
    """Test accuracy against step at each cell's best rate: one panel per (base, width),
    one colour per variant, one line per seed (attention in every panel of its width),
    the guess dotted."""

    def draw_cell(axis, cell: Cell, name: str, colour: str) -> None:
        for index, run in enumerate(cell.best_runs):
            steps, accuracies = zip(*run.curve, strict=True) if run.curve else ((), ())
            axis.plot(
                steps,
                accuracies,
                color=colour,
                linestyle="--" if cell.base == ATTENTION else "-",
                linewidth=1,
                label=f"{name} (lr {cell.best_lr:g})" if index == 0 else None,
            )

    labels = ("step", "test accuracy")
    return _per_panel(cells, path, labels, draw_cell, lambda axis: _draw_guess(axis, guess))


def plot_accuracy_by_slice(
    cells: Sequence[Cell], path: Path, guess: Guess, slices: Sequence[str]
) -> Path:
    """Accuracy on each test slice (the needle's lengths, MQAR's lengths and pair counts):
    one panel per (base, width), one line per variant (mean +- std over seeds), attention
    dashed, the guess on each slice dotted."""
    where = list(range(len(slices)))

    def draw_cell(axis, cell: Cell, name: str, colour: str) -> None:
        seeds = [cell.slice_accuracies(key) for key in slices]
        axis.errorbar(
            where,
            [sum(s) / len(s) if s else math.nan for s in seeds],
            yerr=[0.0 if math.isnan(seed_std(s)) else seed_std(s) for s in seeds],
            color=colour,
            linestyle="--" if cell.base == ATTENTION else "-",
            marker="*" if cell.base == ATTENTION else "o",
            capsize=3,
            label=name,
        )

    def finish_panel(axis) -> None:
        floor = [guess.per_slice.get(key, math.nan) for key in slices]
        axis.plot(where, floor, color="grey", linestyle=":", linewidth=1, label="guess")
        axis.set_xticks(where, [short_slice(key) for key in slices])

    labels = ("test slice", "test accuracy (mean +- std)")
    return _per_panel(cells, path, labels, draw_cell, finish_panel)
