"""The report of a study trained fairly (seeds, a learning-rate sweep): one cell per
(base, variant, width), its accuracy as mean +- standard deviation over seeds at its best
rate, tables and plots of accuracy against width and against decode state bytes, the
learning curves, and what the study cost, measured and extrapolated to another space
(a pilot's timings -> the full study's hours).

A cell's variant is the trial's drawn parameters other than the recurrence and the width
(the `variant` bundle of search/paper_cpu.yaml: base, grm, ssc, log).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from mcgen.mqar.guess import guess_accuracy
from mcgen.search import study as studies
from mcgen.search.errors import SearchError
from mcgen.search.objective import (
    Run,
    eval_length,
    evaluation_slices,
    runs_in,
    short_slice,
    test_keys,
)
from mcgen.search.space import SearchSpace, grid_specs, load_space
from mcgen.search.trials import REFERENCE, WIDTH

ATTENTION = "attention"


@dataclass(frozen=True)
class Cell:
    """One candidate (or attention) of a study: its score over seeds at its best rate."""

    number: int
    base: str  # the recurrence, or "attention"
    variant: str  # the drawn parameters but recurrence and width ("-" for attention)
    width: int
    accuracy: float  # the best rate's mean over seeds
    spread: float  # the best rate's standard deviation over seeds
    best_lr: float
    lr_status: str  # bracketed | capped | fixed
    decode_state_bytes: float
    per_slice: dict[str, float]
    runs: list[Run]
    seconds: float  # the whole trial: build, every run, evaluations
    base_rnn: bool = False  # the recurrence alone: no aggregation over cached memories

    @property
    def worker_seconds(self) -> float:
        """What the cell cost one core: its trial's seconds, or its runs' own where the
        trial took them from another study (--reuse-runs) instead of training them."""
        return max(self.seconds, sum(run.seconds for run in self.runs))

    @property
    def best_runs(self) -> list[Run]:
        """The runs the score is taken from, by seed: the best rate's, each seed's final
        run (trained to the budget) in place of its sweep run when it has one."""
        by_seed = {r.seed: r for r in self.runs if r.lr == self.best_lr and not r.final}
        by_seed.update({r.seed: r for r in self.runs if r.lr == self.best_lr and r.final})
        return [by_seed[seed] for seed in sorted(by_seed)]

    def sweep_accuracy(self) -> float:
        """The best rate's mean over its sweep runs (before any final run)."""
        sweep = [r.accuracy for r in self.runs if r.lr == self.best_lr and not r.final]
        return sum(sweep) / len(sweep) if sweep else math.nan

    def seed_accuracies(self) -> list[float]:
        """The best rate's runs' accuracies, by seed: what the mean and spread summarise
        (a spread of 0.49 over three seeds is two that learned and one that did not)."""
        return [run.accuracy for run in self.best_runs]

    def slice_accuracies(self, key: str) -> list[float]:
        """The best rate's runs' accuracies on one test slice, by seed."""
        return [run.per_slice.get(key, math.nan) for run in self.best_runs]

    def stops(self) -> str:
        """How the best rate's runs ended: "plateau 2, budget 1"."""
        reasons = [run.stop_reason for run in self.best_runs]
        return ", ".join(f"{r} {reasons.count(r)}" for r in sorted(set(reasons)))


def _width_names(space: SearchSpace) -> set[str]:
    """The parameters that set the width: layer.d_model, or a bundle whose choices do."""
    names = {"layer.d_model"}
    for bundle, choices in space.bundles.items():
        if any("d_model" in (choice.get("layer") or {}) for choice in choices.values()):
            names.add(bundle)
    return names


def _variant(trial: FrozenTrial, space: SearchSpace) -> str:
    skip = _width_names(space) | {"memory.recurrence"}
    parts = [f"{value}" for name, value in trial.params.items() if name not in skip]
    return " ".join(parts) or "-"


def _cell(trial: FrozenTrial, space: SearchSpace) -> Cell:
    attrs = trial.user_attrs
    runs = [Run.from_json(run) for run in runs_in(attrs).values()]
    base_rnn = False
    if attrs.get(REFERENCE) == ATTENTION:
        base, variant, width = ATTENTION, "-", int(attrs[WIDTH])
    else:
        spec = yaml.safe_load(attrs["spec"])
        base, variant = spec["memory"]["recurrence"], _variant(trial, space)
        width = int(spec["layer"]["d_model"])
        base_rnn = spec["aggregation"]["kind"] == "none"
    return Cell(
        number=trial.number,
        base=base,
        variant=variant,
        width=width,
        accuracy=float(attrs["accuracy"]),
        spread=float(attrs.get("spread", 0.0)),
        best_lr=float(attrs["best_lr"]),
        lr_status=str(attrs.get("lr_status", "fixed")),
        decode_state_bytes=float(attrs.get("decode_state_bytes", math.nan)),
        per_slice=dict(attrs.get("per_slice", {})),
        runs=runs,
        seconds=float(attrs.get("seconds", 0.0)),
        base_rnn=base_rnn,
    )


@dataclass(frozen=True)
class Guess:
    """What guessing among the value tokens seen before a query scores on the study's
    tests (mcgen.mqar.guess): the floor its accuracies are read against."""

    accuracy: float
    per_slice: dict[str, float]


def guess_floor(space: SearchSpace) -> Guess:
    return Guess(*guess_accuracy(evaluation_slices(space), space.data.vocab_size))


def load_cells(study: optuna.Study, space: SearchSpace) -> list[Cell]:
    """Every complete trial that trained (not one that reused another's result), as cells
    sorted by base, variant, width."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    cells = [_cell(t, space) for t in trials if "reused_from" not in t.user_attrs]
    return sorted(cells, key=lambda c: (c.base == ATTENTION, c.base, c.variant, c.width))


# --- tables ---------------------------------------------------------------------------------


def _std(values: Sequence[float]) -> float:
    """The sample standard deviation, as the cell's own spread is taken."""
    return statistics.stdev(values) if len(values) > 1 else math.nan


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
            spread = _std(cell.slice_accuracies(key)) if seeds > 1 else math.nan
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
    error = math.sqrt(_std(variant) ** 2 / len(variant) + _std(plain) ** 2 / len(plain))
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


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _table_section(
    title: str, command: str, legend: str, table: tuple[list[str], list[list[str]]]
) -> list[str]:
    """A section of grid.md: its title, the command, a legend and the table (none when the
    table has no rows)."""
    header, rows = table
    if not rows:
        return []
    lines = ["", f"## {title}", "", f"From `{command}`:", "", legend, ""]
    return lines + _markdown_table(header, rows)


# --- cost -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """A cell's measured cost: seconds per training step and per evaluation (of its whole
    test set), and what its trial spent outside the runs (building, loading data)."""

    step_s: float
    eval_s: float
    overhead_s: float


def timing(cell: Cell) -> Timing:
    runs = cell.runs
    steps = sum(run.steps for run in runs)
    evals = sum(len(run.curve) for run in runs)
    eval_s = sum(run.eval_seconds for run in runs)
    train_s = sum(run.seconds for run in runs) - eval_s
    overhead = max(0.0, cell.seconds - sum(run.seconds for run in runs))
    return Timing(train_s / max(steps, 1), eval_s / max(evals, 1), overhead)


@dataclass(frozen=True)
class Estimate:
    """The extrapolated cost of a space's study, in worker-seconds (one core each)."""

    candidates: int
    runs_first: int  # runs per candidate before any widening (rates x seeds)
    runs_widest: int  # with every widening used
    # every run stopped by the plateau rule at its earliest (min_steps); with
    # full_budget_at_best, the best rate's runs then going on to the budget
    floor_s: float
    budget_s: float  # every run to its step budget, no widening
    widest_s: float  # every run to its step budget, every widening used

    def hours(self, seconds: float, workers: int) -> float:
        return seconds / workers / 3600


def _key(cell: Cell) -> tuple[str, str, int]:
    return (cell.base, cell.variant, cell.width)


def extrapolate(cells: Sequence[Cell], target: SearchSpace) -> Estimate:
    """The target space's cost from these cells' timings, matched by (base, variant,
    width): the target must draw the same candidates (a pilot of it does)."""
    measured = {_key(cell): timing(cell) for cell in cells}
    settings = target.train
    rates = len(settings.first_rates())
    widenings = settings.lr_sweep.max_widenings if settings.lr_sweep is not None else 0
    plateau = settings.plateau
    # The first step the plateau rule can stop a run at (the budget without one).
    earliest = settings.steps
    if plateau is not None:
        earliest = min(settings.steps, max(plateau.min_steps, plateau.window))

    def run_s(key: tuple[str, str, int], steps: int) -> float:
        t = measured[key]
        every = settings.eval_every or steps
        return steps * t.step_s + math.ceil(steps / every) * t.eval_s

    keys = _target_keys(target)
    missing = [k for k in keys if k not in measured]
    if missing:
        raise SearchError(
            f"--extrapolate: no timing for {len(missing)} of {target.name}'s candidates "
            f"(first: {' '.join(map(str, missing[0]))}): time a pilot that draws the same ones"
        )
    seeds = settings.seeds
    overhead = sum(measured[k].overhead_s for k in keys)
    # The best rate's runs then go on from where the rule stopped them, to the budget.
    finals = seeds if settings.full_budget_at_best else 0
    floor = overhead + sum(
        rates * seeds * run_s(k, earliest)
        + finals * (run_s(k, settings.steps) - run_s(k, earliest))
        for k in keys
    )
    budget = sum(rates * seeds * run_s(k, settings.steps) for k in keys) + overhead
    widest = sum((rates + widenings) * seeds * run_s(k, settings.steps) for k in keys) + overhead
    return Estimate(len(keys), rates * seeds, (rates + widenings) * seeds, floor, budget, widest)


def _target_keys(space: SearchSpace) -> list[tuple[str, str, int]]:
    """(base, variant, width) of every candidate a grid space draws, and attention's."""
    keys = []
    skip = _width_names(space) | {"memory.recurrence"}
    for params, spec in grid_specs(space):
        variant = " ".join(f"{v}" for n, v in params.items() if n not in skip) or "-"
        keys.append((spec["memory"]["recurrence"], variant, int(spec["layer"]["d_model"])))
    widths = [a[WIDTH] for a in studies.reference_points(space)]
    return keys + [(ATTENTION, "-", w) for w in dict.fromkeys(widths)]


# --- plots ------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bases(cells: Sequence[Cell]) -> list[str]:
    return list(dict.fromkeys(c.base for c in cells if c.base != ATTENTION))


def _variants(cells: Sequence[Cell]) -> list[str]:
    return list(dict.fromkeys(c.variant for c in cells if c.base != ATTENTION))


def _draw_guess(axis, guess: Guess) -> None:
    axis.axhline(guess.accuracy, color="grey", linestyle=":", linewidth=1, label="guess")


def plot_accuracy_against(
    cells: Sequence[Cell], path: Path, *, x: str, title: str, guess: Guess
) -> Path:
    """One panel per base, one line per variant (mean +- std over seeds as error bars, each
    seed a dot beside it), attention dashed, the guess dotted; x is "width" (the variants
    side by side, a little apart) or "decode_state_bytes" (log scale)."""
    plt = _pyplot()
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
    axes[-1].legend(fontsize=7, loc="best")
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


def plot_curves(cells: Sequence[Cell], path: Path, guess: Guess) -> Path:
    """Test accuracy against step at each cell's best rate: one panel per (base, width),
    one colour per variant, one line per seed (attention in every panel of its width),
    the guess dotted."""
    plt = _pyplot()
    bases = _bases(cells) or [ATTENTION]
    widths = sorted({c.width for c in cells})
    figure, grid = _panels(plt, len(bases), len(widths))
    colours = {v: f"C{i}" for i, v in enumerate(_variants(cells))}
    colours[ATTENTION] = "black"
    for row, base in enumerate(bases):
        for column, width in enumerate(widths):
            axis = grid[row][column]
            for cell in cells:
                if cell.width != width or cell.base not in (base, ATTENTION):
                    continue
                name = ATTENTION if cell.base == ATTENTION else cell.variant
                for index, run in enumerate(cell.best_runs):
                    steps, accuracies = zip(*run.curve, strict=True) if run.curve else ((), ())
                    axis.plot(
                        steps,
                        accuracies,
                        color=colours[name],
                        linestyle="--" if cell.base == ATTENTION else "-",
                        linewidth=1,
                        label=f"{name} (lr {cell.best_lr:g})" if index == 0 else None,
                    )
            _draw_guess(axis, guess)
            axis.set_title(f"{base}, d_model {width}", fontsize=9)
            axis.set_ylim(-0.02, 1.02)
            axis.grid(True, alpha=0.3)
            axis.legend(fontsize=6, loc="best")
    _label(grid, "step", "test accuracy")
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
    return path


def plot_accuracy_by_slice(
    cells: Sequence[Cell], path: Path, guess: Guess, slices: Sequence[str]
) -> Path:
    """Accuracy on each test slice (the needle's lengths, MQAR's lengths and pair counts):
    one panel per (base, width), one line per variant (mean +- std over seeds), attention
    dashed, the guess on each slice dotted."""
    plt = _pyplot()
    bases = _bases(cells) or [ATTENTION]
    widths = sorted({c.width for c in cells})
    figure, grid = _panels(plt, len(bases), len(widths))
    colours = {v: f"C{i}" for i, v in enumerate(_variants(cells))}
    colours[ATTENTION] = "black"
    where = list(range(len(slices)))
    for row, base in enumerate(bases):
        for column, width in enumerate(widths):
            axis = grid[row][column]
            for cell in cells:
                if cell.width != width or cell.base not in (base, ATTENTION):
                    continue
                name = ATTENTION if cell.base == ATTENTION else cell.variant
                seeds = [cell.slice_accuracies(key) for key in slices]
                axis.errorbar(
                    where,
                    [sum(s) / len(s) if s else math.nan for s in seeds],
                    yerr=[0.0 if math.isnan(_std(s)) else _std(s) for s in seeds],
                    color=colours[name],
                    linestyle="--" if cell.base == ATTENTION else "-",
                    marker="*" if cell.base == ATTENTION else "o",
                    capsize=3,
                    label=name,
                )
            floor = [guess.per_slice.get(key, math.nan) for key in slices]
            axis.plot(where, floor, color="grey", linestyle=":", linewidth=1, label="guess")
            axis.set_xticks(where, [short_slice(key) for key in slices])
            axis.set_title(f"{base}, d_model {width}", fontsize=9)
            axis.set_ylim(-0.02, 1.02)
            axis.grid(True, alpha=0.3)
            axis.legend(fontsize=6, loc="best")
    _label(grid, "test slice", "test accuracy (mean +- std)")
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
    return path


# --- the markdown ----------------------------------------------------------------------------


def _estimate_lines(estimate: Estimate, target: SearchSpace, target_file: str) -> list[str]:
    t = target.train
    lines = [
        f"## Cost of `{target_file}`, extrapolated from these timings",
        "",
        f"{estimate.candidates} trials (attention included); per candidate "
        f"{estimate.runs_first} runs ({len(t.first_rates())} rates x {t.seeds} seeds), "
        f"{estimate.runs_widest} if every widening of the rate sweep is used; each run at "
        f"most {t.steps} steps, evaluated every {t.eval_every or t.steps}.",
        "",
        "| case | worker-hours | hours with --workers 1 | --workers 2 |",
        "|---|---|---|---|",
    ]
    cases = (
        (
            "every run stops at the plateau rule's earliest step, no widening"
            + (" (then the best rate's go on to the budget)" if t.full_budget_at_best else ""),
            estimate.floor_s,
        ),
        ("every run to its step budget, no widening", estimate.budget_s),
        ("every run to its budget, every widening used", estimate.widest_s),
    )
    for label, seconds in cases:
        lines.append(
            f"| {label} | {seconds / 3600:.2f} | {estimate.hours(seconds, 1):.2f} "
            f"| {estimate.hours(seconds, 2):.2f} |"
        )
    lines += [
        "",
        "Two workers divide the work by two only while both have a trial: the last "
        "(largest) trial can run alone at the end.",
    ]
    return lines


def _guess_lines(guess: Guess) -> list[str]:
    by_slice = ", ".join(f"{short_slice(key)} {acc:.3f}" for key, acc in guess.per_slice.items())
    return [
        f"Guessing among the value tokens seen before each query scores {guess.accuracy:.3f} "
        f"on these tests ({by_slice}; the dotted line in the plots): a cell at or under it "
        "has bound no key to its value.",
        "",
    ]


def grid_markdown(
    study_name: str,
    space: SearchSpace,
    cells: Sequence[Cell],
    files: dict[str, str],
    out_dir: Path,
    guess: Guess,
    estimate: tuple[Estimate, SearchSpace, str] | None = None,
) -> str:
    slices = test_keys(space)
    run = f"mcgen search search/{space.name}.yaml --workers 2 --trials N"
    report = f"mcgen search report {study_name}"
    if estimate is not None:
        report += f" --extrapolate {estimate[2]}"
    lines = [f"# {study_name}: accuracy by base, variant and width", ""]
    lines += [
        f"Task: {space.task} (test length T = {eval_length(space)}); each cell is the best "
        "learning rate's mean +- standard deviation over seeds (each run scored at its "
        "best evaluation), `by seed` each seed's at that rate. `lr range`: bracketed (worse "
        "rates on both sides), capped (the sweep's widenings ran out with the best at an "
        "end) or fixed (a fixed list). "
        + (
            "The plateau rule only picks the rate: the best rate's runs it stopped were "
            "trained on to the step budget, and the score is theirs (`sweep mean`: the "
            "best rate's mean before that)."
            if space.train.full_budget_at_best
            else "`sweep mean`: the same runs' mean (no run is trained again)."
        ),
        "",
        *_guess_lines(guess),
        "Every number below comes from these two commands (N: the study's trial count):",
        "",
        "```bash",
        run,
        report,
        "```",
        "",
    ]
    header, rows = cells_table(cells, slices)
    lines += _markdown_table(header, rows)
    lines += _table_section(
        "What caching adds to each base RNN",
        report,
        "`gain`: the variant's mean minus its base RNN's (same recurrence and width), "
        "+- the standard error of that difference (each mean's std / sqrt(seeds), "
        "combined; none where a cell has one seed); `> 2 s.e.`: whether the gain is more "
        "than twice it (with 3 seeds a rough screen, not a test); `seeds above`: how "
        "many of the variant's seeds beat the base RNN's best seed"
        + ("; `gain` of a slice: the same on that test slice alone." if len(slices) > 1 else "."),
        gains_table(cells, slices),
    )
    lines += _table_section(
        "Still rising at the step budget?",
        report,
        "For each run behind a score that trained to the step budget (one that met the "
        "target had nothing left to gain), how much its best accuracy grew over the "
        "budget's last quarter: near zero, more steps would have added little; the "
        "learning curves below show the rest.",
        rise_table(cells, space.train.steps),
    )
    for key, caption in (
        ("accuracy_width", "Accuracy against width"),
        ("accuracy_state", "Accuracy against decode state bytes"),
        ("accuracy_slice", "Accuracy on each test slice"),
        ("curves", "Learning curves at each cell's best rate (one line per seed)"),
    ):
        if key in files:
            relative = Path(files[key]).relative_to(out_dir).as_posix()
            lines += ["", f"## {caption}", "", f"From `{report}`:", ""]
            lines.append(f"![{caption}]({relative})")
    lines += ["", "## Cost measured", "", f"From `{report}`:", ""]
    lines += [
        "`worker s`: what each cell cost one core, its runs taken from another study "
        "(`--reuse-runs`) counted at their own seconds.",
        "",
    ]
    lines += _markdown_table(
        ["base", "variant", "width", "s / step", "s / evaluation", "worker s"], []
    )
    for cell in cells:
        t = timing(cell)
        lines.append(
            f"| {cell.base} | {cell.variant} | {cell.width} | {t.step_s:.4f} | {t.eval_s:.3f} "
            f"| {cell.worker_seconds:.0f} |"
        )
    total = sum(cell.worker_seconds for cell in cells)
    lines += ["", f"Total: {total / 3600:.2f} worker-hours over {len(cells)} trials."]
    if estimate is not None:
        lines += ["", *_estimate_lines(*estimate)]
    return "\n".join(lines) + "\n"


def write_grid_report(
    study: optuna.Study,
    space: SearchSpace,
    study_name: str,
    out_dir: Path,
    *,
    extrapolate_to: Path | None = None,
) -> dict[str, str]:
    """Write grid.md and its plots into out_dir; returns their paths by key."""
    cells = load_cells(study, space)
    guess = guess_floor(space)
    files: dict[str, str] = {}
    slices = test_keys(space)
    if len({c.width for c in cells}) > 1:  # one width: nothing to draw against
        files["accuracy_width"] = str(
            plot_accuracy_against(
                cells,
                out_dir / "accuracy_width.png",
                x="width",
                title="accuracy against width",
                guess=guess,
            )
        )
    if cells:
        files["accuracy_state"] = str(
            plot_accuracy_against(
                cells,
                out_dir / "accuracy_state.png",
                x="decode_state_bytes",
                title=f"accuracy against decode state at T = {eval_length(space)}",
                guess=guess,
            )
        )
        files["curves"] = str(plot_curves(cells, out_dir / "curves.png", guess))
    if cells and len(slices) > 1:
        path = out_dir / "accuracy_slice.png"
        files["accuracy_slice"] = str(plot_accuracy_by_slice(cells, path, guess, slices))
    estimate = None
    if extrapolate_to is not None:
        target = load_space(extrapolate_to)
        estimate = (extrapolate(cells, target), target, extrapolate_to.as_posix())
    text = grid_markdown(study_name, space, cells, files, out_dir, guess, estimate)
    files["grid_md"] = str(out_dir / "grid.md")
    Path(files["grid_md"]).write_text(text, encoding="utf-8")
    return files
