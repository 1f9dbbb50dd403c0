"""Where in the haystack a needle study's models lose the needle.

`mcgen search depth STUDY --trial N --seed S` trains the run trial N scored for seed S
again: its best rate, to the step budget (the study's own run, bit for bit on the same
machine and versions; the journal's accuracies check it), keeping the weights of the
evaluation the study scored. Each test slice is then scored by where its needle sat:
DEPTH_BINS equal bins of the needle's position over the places it can take, the usual
depth axis of needle-in-a-haystack tests (0: the haystack's start, far from the
question; the last bin: just before it). Each run's counts go to
<out>/trial<N>_seed<S>.json, and depth.md and depth.png are drawn again from every such
file in <out>, so that runs added later join the same table.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from mcgen.mqar.train import Paused, query_hits, train
from mcgen.niah.data import NIAHData
from mcgen.search import study as studies
from mcgen.search.errors import SearchError
from mcgen.search.objective import (
    Run,
    attention_reference,
    final_key,
    load_task_data,
    new_model,
    one_thread,
    run_config,
    run_key,
    scored,
    spec_mixer,
)
from mcgen.search.space import SearchSpace
from mcgen.search.trials import REFERENCE, WIDTH, numbered, trial_label

DEPTH_BINS = 8
DEPTH_DIR = "depth"  # the default output folder, in runs/<study>/


@dataclass(frozen=True)
class DepthRun:
    """One retrained run's needle counts by depth bin, per test slice (its key)."""

    study: str
    trial: int
    label: str
    lr: float
    seed: int
    step: int  # the evaluation the study scored
    journal: dict[str, float]  # the study's accuracy per slice for this run
    retrained: dict[str, float]  # this run's, at the same evaluation
    correct: dict[str, list[int]]  # per slice, per depth bin
    queries: dict[str, list[int]]

    @property
    def reproduced(self) -> bool:
        """The retrained run scored what the study scored, slice by slice."""
        return self.journal.keys() == self.retrained.keys() and all(
            math.isclose(self.journal[k], self.retrained[k], abs_tol=1e-9) for k in self.journal
        )

    def to_json(self) -> dict:
        return {**self.__dict__, "reproduced": self.reproduced}

    @staticmethod
    def from_json(data: dict) -> DepthRun:
        fields = {k: v for k, v in data.items() if k != "reproduced"}
        return DepthRun(**fields)


def depth_bin(needle_at: torch.Tensor, split_places: int) -> torch.Tensor:
    """The depth bin of each needle: needle_at in [0, split_places) -> [0, DEPTH_BINS)."""
    return needle_at * DEPTH_BINS // split_places


def depth_counts(model: nn.Module, data: NIAHData, batch_size: int) -> tuple[list[int], list[int]]:
    """(correct answers, questions) per depth bin of one test slice."""
    value_len = data.split.value_len
    places = data.split.seq_len - 2 * value_len  # where a needle may start (niah.data)
    hits = query_hits(model, data, batch_size).view(len(data), value_len)
    bins = depth_bin(data.needle_at, places)
    correct = torch.bincount(bins, weights=hits.sum(dim=1), minlength=DEPTH_BINS)
    needles = torch.bincount(bins, minlength=DEPTH_BINS)
    return [int(c) for c in correct.tolist()], (needles * value_len).tolist()


def scored_run(trial: FrozenTrial, seed: int) -> tuple[float, dict]:
    """(rate, journal record) of the run trial scored for seed: its best rate's final run
    when the plateau rule had stopped the sweep's, else the sweep's."""
    lr = trial.user_attrs.get("best_lr")
    if trial.state != TrialState.COMPLETE or lr is None:
        raise SearchError(f"trial {trial.number} is not complete: it has no scored runs yet")
    for key in (final_key(lr, seed), run_key(lr, seed)):
        if key in trial.user_attrs:
            return lr, trial.user_attrs[key]
    raise SearchError(f"trial {trial.number} has no run of seed {seed} at its best rate {lr:g}")


def retrain(
    study: str,
    trial: FrozenTrial,
    space: SearchSpace,
    seed: int,
    workdir: Path,
    *,
    progress: bool = False,
) -> DepthRun:
    """Train trial's scored run of `seed` again and count its needles by depth."""
    lr, record = scored_run(trial, seed)
    if trial.user_attrs.get(REFERENCE) == "attention":
        d_model, factory = attention_reference(space, trial.user_attrs.get(WIDTH))
    else:
        d_model, factory = spec_mixer(trial.user_attrs["spec"], workdir)
    data = load_task_data(space, None)
    model = new_model(space, d_model, factory, seed)
    best: dict = {}

    def keep_best(paused: Paused) -> None:  # the first of the best, as train scores it
        latest = paused.history[-1]
        if not best or latest.accuracy > best["accuracy"]:
            best.update(accuracy=latest.accuracy, step=latest.step, weights=paused.model)

    config = run_config(space, d_model, lr, seed, final=True)
    with one_thread():
        result = train(model, data[0], data[1], config, progress=progress, on_evaluation=keep_best)
        if best.get("step") != result.best_step:  # the last evaluation: the model as it is
            best["weights"] = model.state_dict()
        model.load_state_dict(best["weights"])
        # The needle task's test slices are NIAHData: they say where each needle sat.
        counts = {d.key: depth_counts(model, d, config.batch_size) for d in data[1]}
    return DepthRun(
        study=study,
        trial=trial.number,
        label=trial_label(trial),
        lr=lr,
        seed=seed,
        step=result.best_step,
        journal=Run.from_json(record).per_slice,
        retrained=scored(result)[1],
        correct={key: c for key, (c, _) in counts.items()},
        queries={key: q for key, (_, q) in counts.items()},
    )


def probe(
    study: str,
    trial_number: int,
    seeds: list[int] | None = None,
    *,
    storage: str | None = None,
    runs_dir: str | Path = studies.DEFAULT_RUNS,
    out: str | Path | None = None,
    on_run: Callable[[DepthRun], None] | None = None,
    progress: bool = True,
) -> list[DepthRun]:
    """Retrain trial_number's scored run of each seed (default: every seed of the space),
    write each one's counts to out (default runs/<study>/depth/) as it ends and give it to
    on_run. progress: a bar per run on a terminal, a line per evaluation elsewhere."""
    location = studies.locate(study, storage=storage, runs_dir=runs_dir)
    study_obj, _, space = studies.load_study(location)
    if space.niah is None:
        raise SearchError(f"study {study} trains on MQAR: `depth` needs a needle (niah) study")
    trial = numbered(study_obj, trial_number)
    seeds = list(space.train.run_seeds()) if seeds is None else seeds
    for seed in seeds:
        scored_run(trial, seed)  # every seed is checked before any trains
    out_dir = Path(out) if out is not None else Path(runs_dir) / study / DEPTH_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    done = []
    with tempfile.TemporaryDirectory(prefix="mcgen-depth-") as workdir:
        for seed in seeds:
            run = retrain(study, trial, space, seed, Path(workdir), progress=progress)
            path = out_dir / f"trial{trial.number}_seed{seed}.json"
            path.write_text(json.dumps(run.to_json(), indent=1) + "\n", encoding="utf-8")
            done.append(run)
            if on_run is not None:
                on_run(run)
    return done


def load_runs(out_dir: Path) -> list[DepthRun]:
    """Every run's counts in out_dir, by trial then seed."""
    runs = [
        DepthRun.from_json(json.loads(path.read_text(encoding="utf-8")))
        for path in out_dir.glob("trial*_seed*.json")
    ]
    return sorted(runs, key=lambda r: (r.trial, r.seed))
