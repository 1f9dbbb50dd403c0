"""A trial's records in a study, as the coordinator, the workers and the reports read
them: the user attributes mcgen writes on trials, a trial's id in the storage, counts by
state, a short label for people, and failing a trial to enqueue it again."""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from mcgen.search.errors import SearchError

DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)

# User attributes of a trial.
REFERENCE = "reference"  # "base_rnn" | "attention": a reference point, not a draw
WIDTH = "width"  # the reference point's d_model
WORKER = "worker"  # who ran it: {"host", "pid", "index", "boot", "start"}
RETRY_OF = "retry_of"  # the number of the trial this one re-runs
GRID = "grid"  # an enqueued point of a grid space
FAILURE = "failure"  # why a trial failed
# Whose runs a trial holds: the spec's name, or "attention d_model=W"; trials with the
# same one share their finished runs.
RUNS_OF = "runs_of"
# What a re-enqueued trial keeps of the one it replaces.
_CARRIED = (REFERENCE, WIDTH, GRID)


def numbered(study: optuna.Study, number: int) -> FrozenTrial:
    """The study's trial `number`, or a SearchError that gives the range it has."""
    trials = study.get_trials(deepcopy=False)
    if not trials:
        raise SearchError(f"study {study.study_name} has no trial yet")
    if not 0 <= number < len(trials):
        raise SearchError(
            f"study {study.study_name} has trials 0 to {len(trials) - 1}, not {number}"
        )
    return trials[number]


@dataclass(frozen=True)
class Counts:
    complete: int = 0
    pruned: int = 0
    running: int = 0
    waiting: int = 0
    failed: int = 0
    rerun: int = 0  # of the failed, those a later trial runs again (interrupted ones)

    @property
    def done(self) -> int:
        return self.complete + self.pruned

    @property
    def failed_label(self) -> str:
        """`3 failed`, and how many of them run again: a stopped study's failures are its
        interrupted trials, each re-run, which a bare count would make look like errors."""
        if not self.rerun:
            return f"{self.failed} failed"
        if self.rerun == self.failed:
            return f"{self.failed} failed and run again"
        return f"{self.failed} failed ({self.rerun} run again)"


def counts(study: optuna.Study) -> Counts:
    trials = study.get_trials(deepcopy=False)
    tally = {state: 0 for state in TrialState}
    for trial in trials:
        tally[trial.state] += 1
    retried = {t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs}
    return Counts(
        complete=tally[TrialState.COMPLETE],
        pruned=tally[TrialState.PRUNED],
        running=tally[TrialState.RUNNING],
        waiting=tally[TrialState.WAITING],
        failed=tally[TrialState.FAIL],
        rerun=sum(t.state == TrialState.FAIL and t.number in retried for t in trials),
    )


def trial_id(storage: optuna.storages.BaseStorage, study: optuna.Study, number: int) -> int:
    """The storage's id of the study's trial `number` (what storage calls take)."""
    study_id = storage.get_study_id_from_name(study.study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def _params(trial: FrozenTrial) -> dict:
    """A trial's parameters; for an enqueued one not started yet, those it was given."""
    return dict(trial.params) or dict(trial.system_attrs.get("fixed_params", {}))


def trial_label(trial: FrozenTrial) -> str:
    """A short name: the reference point, or the candidate's varied fields."""
    if REFERENCE in trial.user_attrs:
        kind = {"base_rnn": "base RNN", "attention": "attention"}[trial.user_attrs[REFERENCE]]
        return f"{kind} (d_model {trial.user_attrs.get(WIDTH)})"
    return " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in _params(trial).items())


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue a trial again: the same parameters (and reference flag), a new number."""
    params = _params(trial)
    attrs = {k: trial.user_attrs[k] for k in _CARRIED if k in trial.user_attrs}
    attrs[RETRY_OF] = trial.number
    study.enqueue_trial(params=params, user_attrs=attrs)


def fail_and_requeue(
    study: optuna.Study, storage: optuna.storages.BaseStorage, trial: FrozenTrial, why: str
) -> bool:
    """Mark a running trial FAIL (saying why) and enqueue it again; False if it had
    finished meanwhile."""
    stored = trial_id(storage, study, trial.number)
    try:
        storage.set_trial_user_attr(stored, FAILURE, why)
        if not storage.set_trial_state_values(stored, state=TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    requeue(study, trial)
    return True
