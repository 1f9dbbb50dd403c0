"""A study's cells: one per (base, variant, width), its best rate's runs by seed, and the
guess its accuracies are read against.

A cell's variant is the trial's drawn parameters other than the recurrence and the width
(the `variant` bundle of search/paper_cpu.yaml: base, grm, ssc, log).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from mcgen.mqar.guess import guess_accuracy
from mcgen.search.objective import Run, evaluation_slices, runs_in, worker_seconds
from mcgen.search.space import SearchSpace
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
    runs: list[Run]
    seconds: float  # the whole trial: build, every run, evaluations
    base_rnn: bool = False  # the recurrence alone: no aggregation over cached memories

    @property
    def worker_seconds(self) -> float:
        """What the cell cost one worker (objective.worker_seconds)."""
        return worker_seconds(self.seconds, sum(run.seconds for run in self.runs))

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

    @property
    def per_slice(self) -> dict[str, float]:
        """Each test slice's mean over the best rate's runs, as the journal's runs read
        (Run.from_json: a diverged run scores 0 on each slice, which the per-slice means
        of older journals' trials did not count)."""
        runs = self.best_runs
        keys = runs[0].per_slice if runs else {}
        return {key: statistics.fmean(self.slice_accuracies(key)) for key in keys}

    def stops(self) -> str:
        """How the best rate's runs ended: "plateau 2, budget 1"."""
        reasons = [run.stop_reason for run in self.best_runs]
        return ", ".join(f"{r} {reasons.count(r)}" for r in sorted(set(reasons)))


def width_names(space: SearchSpace) -> set[str]:
    """The parameters that set the width: layer.d_model, or a bundle whose choices do."""
    names = {"layer.d_model"}
    for bundle, choices in space.bundles.items():
        if any("d_model" in (choice.get("layer") or {}) for choice in choices.values()):
            names.add(bundle)
    return names


def _variant(trial: FrozenTrial, space: SearchSpace) -> str:
    skip = width_names(space) | {"memory.recurrence"}
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


def seed_std(values: Sequence[float]) -> float:
    """The sample standard deviation over seeds, as a cell's own spread is taken (NaN for
    one seed)."""
    return statistics.stdev(values) if len(values) > 1 else math.nan
