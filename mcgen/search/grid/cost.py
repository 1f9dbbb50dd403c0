"""What a study cost, per cell, and what another space would cost at these timings (a
pilot's -> the full study's hours)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from mcgen.search import study as studies
from mcgen.search.errors import SearchError
from mcgen.search.grid.cells import ATTENTION, Cell, width_names
from mcgen.search.space import SearchSpace, grid_specs
from mcgen.search.trials import WIDTH


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
    """The extrapolated cost of a space's study, in worker-seconds."""

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
    skip = width_names(space) | {"memory.recurrence"}
    for params, spec in grid_specs(space):
        variant = " ".join(f"{v}" for n, v in params.items() if n not in skip) or "-"
        keys.append((spec["memory"]["recurrence"], variant, int(spec["layer"]["d_model"])))
    widths = [a[WIDTH] for a in studies.reference_points(space)]
    return keys + [(ATTENTION, "-", w) for w in dict.fromkeys(widths)]
