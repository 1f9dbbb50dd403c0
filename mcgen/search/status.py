"""Where a study stands, read from its storage without touching it: each trial's state,
the runs it holds so far (a waiting re-run: its earlier tries'), its score once complete,
the worker time its runs took and, roughly, what is left. Safe beside the study's own
workers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from mcgen.search import study as studies
from mcgen.search.checkpoints import candidate_checkpoints
from mcgen.search.objective import Run, runs_in, worker_seconds
from mcgen.search.space import SearchSpace
from mcgen.search.trials import (
    REFERENCE,
    RETRY_OF,
    RUNS_OF,
    WIDTH,
    Counts,
    counts,
    numbered,
    trial_label,
)
from mcgen.search.worker import attention_runs_of, candidate_mapping, done_runs


@dataclass(frozen=True)
class TrialStatus:
    number: int
    label: str
    state: str  # complete | running | waiting | failed | pruned
    runs: int  # finished runs it holds, final ones included
    finals: int  # of them, final runs (the best rate's seeds trained to the budget)
    best_run: float | None  # the best accuracy among them
    run_seconds: float  # what they took, one worker each
    run_steps: int  # the training steps they took
    accuracy: float | None  # a complete trial's score: the best rate's mean over seeds
    spread: float | None
    retry_of: int | None  # the trial this one runs again
    retried_as: int | None  # a failed trial's re-run
    started: datetime | None  # a running trial's start
    # A running trial's runs under way: run key -> the step of its last evaluation (from
    # the states its worker saves, mcgen.search.checkpoints).
    under_way: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyStatus:
    study: str
    storage: str
    counts: Counts
    trials: list[TrialStatus]
    # Worker-hours its finished runs took, each counted once (a failed try and its re-run
    # hold the same ones), those taken from another study (--reuse-runs) for trials that
    # have started or wait included.
    run_hours: float
    # Worker-hours the unfinished trials may still take: each costed at the mean of the
    # complete trials of its base (recurrence, or attention) and width, less the runs it
    # holds; where none match, at those of its width (else of all), each scaled by how
    # much longer a step of its base takes than theirs. None before any trial is complete.
    hours_left: float | None

    @property
    def unfinished(self) -> int:
        return sum(t.state in ("running", "waiting") for t in self.trials)

    def to_json(self) -> dict:
        return {
            "study": self.study,
            "storage": self.storage,
            "counts": asdict(self.counts),
            "run_hours": self.run_hours,
            "hours_left": self.hours_left,
            "trials": [
                {**asdict(t), "started": t.started.isoformat() if t.started else None}
                for t in self.trials
            ],
        }


def _mapping(trial: FrozenTrial, space: SearchSpace) -> dict | None:
    """The spec a trial scores: the one its worker wrote, else the one the parameters it was
    enqueued with draw. None for a sampler's trial caught before its worker wrote its spec:
    its parameters may still be being drawn."""
    attrs = trial.user_attrs
    if "spec" in attrs:
        return yaml.safe_load(attrs["spec"])
    fixed = trial.system_attrs.get("fixed_params")
    if fixed is None:
        return None
    return candidate_mapping(
        optuna.trial.FixedTrial(fixed), space, attrs.get(REFERENCE), attrs.get(WIDTH)
    )


def _runs_of(trial: FrozenTrial, space: SearchSpace) -> str | None:
    """Whose runs the trial holds (trials.RUNS_OF): its own mark once started, else the
    name its worker will give them; None while that is not known yet (_mapping)."""
    attrs = trial.user_attrs
    if RUNS_OF in attrs:
        return str(attrs[RUNS_OF])
    if attrs.get(REFERENCE) == "attention":
        return attention_runs_of(attrs.get(WIDTH))
    mapping = _mapping(trial, space)
    return None if mapping is None else mapping["name"]


Kind = tuple[str, int | None]


def _kind(trial: FrozenTrial, space: SearchSpace) -> Kind | None:
    """(base, width) of a trial: its recurrence, or the reference it is, and its d_model;
    None while its spec is not known yet (_mapping)."""
    attrs = trial.user_attrs
    if attrs.get(REFERENCE) == "attention":
        return "attention", attrs.get(WIDTH)
    spec = _mapping(trial, space)
    return None if spec is None else (spec["memory"]["recurrence"], spec["layer"]["d_model"])


def hours_left(
    trials: list[FrozenTrial], statuses: list[TrialStatus], kinds: list[Kind | None]
) -> float | None:
    """StudyStatus.hours_left (a trial of unknown kind at the mean of all complete ones)."""
    done: dict[Kind | None, list[float]] = {}
    for trial, status, kind in zip(trials, statuses, kinds, strict=True):
        if status.state == "complete":
            cost = worker_seconds(float(trial.user_attrs.get("seconds", 0.0)), status.run_seconds)
            done.setdefault(kind, []).append(cost)
    if not done:
        return None
    step_seconds = _step_seconds(statuses, kinds)

    def scaled(kind: Kind | None, other: Kind | None) -> float:
        # A deep memory's steps take several times attention's: cost it at their ratio.
        if kind in step_seconds and other in step_seconds:
            return step_seconds[kind] / step_seconds[other]
        return 1.0

    left = 0.0
    for status, kind in zip(statuses, kinds, strict=True):
        if status.state not in ("running", "waiting"):
            continue
        if kind in done:
            like = {kind: done[kind]}
        else:
            same_width = {k: c for k, c in done.items() if kind and k and k[1] == kind[1]}
            like = same_width or done
        costs = [cost * scaled(kind, other) for other, each in like.items() for cost in each]
        left += max(0.0, sum(costs) / len(costs) - status.run_seconds)
    return left / 3600


def _step_seconds(statuses: list[TrialStatus], kinds: list[Kind | None]) -> dict[Kind, float]:
    """Seconds a training step took, by kind, over the runs its trials hold (a failed
    trial's and its re-run's twice, which leaves the ratio as it is)."""
    seconds: dict[Kind, float] = {}
    steps: dict[Kind, int] = {}
    for status, kind in zip(statuses, kinds, strict=True):
        if kind is not None and status.run_steps:
            seconds[kind] = seconds.get(kind, 0.0) + status.run_seconds
            steps[kind] = steps.get(kind, 0) + status.run_steps
    return {kind: seconds[kind] / steps[kind] for kind in steps}


def _held(trial: FrozenTrial, study: optuna.Study, runs_of: str | None) -> dict[str, dict]:
    """The runs a trial holds; a waiting or running one also those its worker will take
    up: its earlier tries' and those taken from another study."""
    held = runs_in(trial.user_attrs)
    if runs_of is not None and trial.state in (TrialState.WAITING, TrialState.RUNNING):
        held = {**done_runs(study, runs_of), **held}
    return held


def _under_way(held: dict[str, dict], run_dir: Path, runs_of: str | None) -> dict[str, int]:
    """The runs a running trial's worker has saved states of and not yet finished (the
    plateau rule's paused runs are finished ones: their states wait for the final runs)."""
    if runs_of is None:
        return {}
    steps = candidate_checkpoints(run_dir, runs_of).steps()
    return {key: step for key, step in steps.items() if key not in held}


def _status(
    trial: FrozenTrial, held: dict[str, dict], retried_as: dict[int, int], under_way: dict
) -> TrialStatus:
    runs = [Run.from_json(run) for run in held.values()]
    attrs = trial.user_attrs
    complete = trial.state == TrialState.COMPLETE and "accuracy" in attrs
    return TrialStatus(
        number=trial.number,
        label=trial_label(trial),
        state=trial.state.name.lower().replace("fail", "failed"),
        runs=len(runs),
        finals=sum(run.final for run in runs),
        best_run=max((run.accuracy for run in runs), default=None),
        run_seconds=sum(run.seconds for run in runs),
        run_steps=sum(run.steps for run in runs),
        accuracy=float(attrs["accuracy"]) if complete else None,
        spread=float(attrs.get("spread", 0.0)) if complete else None,
        retry_of=attrs.get(RETRY_OF),
        retried_as=retried_as.get(trial.number),
        started=trial.datetime_start if trial.state == TrialState.RUNNING else None,
        under_way=under_way,
    )


def study_status(
    study: str, *, storage: str | None = None, runs_dir: str | Path = studies.DEFAULT_RUNS
) -> StudyStatus:
    location = studies.locate(study, storage=storage, runs_dir=runs_dir)
    study_obj, _, space = studies.load_study(location)
    trials = study_obj.get_trials(deepcopy=False)
    retried_as = {t.user_attrs[RETRY_OF]: t.number for t in trials if RETRY_OF in t.user_attrs}
    statuses, seconds = [], {}
    for trial in trials:
        runs_of = _runs_of(trial, space)
        held = _held(trial, study_obj, runs_of)
        running = trial.state == TrialState.RUNNING
        under_way = _under_way(held, location.run_dir, runs_of) if running else {}
        statuses.append(_status(trial, held, retried_as, under_way))
        seconds.update({(runs_of, key): float(run["seconds"]) for key, run in held.items()})
    kinds = [_kind(trial, space) for trial in trials]
    return StudyStatus(
        study=study,
        storage=location.describe(),
        counts=counts(study_obj),
        trials=statuses,
        run_hours=sum(seconds.values()) / 3600,
        hours_left=hours_left(trials, statuses, kinds),
    )


def trial_runs(
    study: str,
    number: int,
    *,
    storage: str | None = None,
    runs_dir: str | Path = studies.DEFAULT_RUNS,
) -> tuple[str, list[Run]]:
    """(label, runs) of one trial: the finished runs it holds as study_status counts them
    (a waiting re-run: its earlier tries'), by rate and seed, the final ones last."""
    location = studies.locate(study, storage=storage, runs_dir=runs_dir)
    study_obj, _, space = studies.load_study(location)
    trial = numbered(study_obj, number)
    held = _held(trial, study_obj, _runs_of(trial, space))
    runs = sorted((Run.from_json(run) for run in held.values()), key=_run_order)
    return trial_label(trial), runs


def _run_order(run: Run) -> tuple[bool, float, int]:
    return run.final, run.lr, run.seed
