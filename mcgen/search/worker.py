"""One search worker: claim trials of a study and score them until the study has its
trials (or a deadline passes). `mcgen search` starts N of these as processes:

    python -m mcgen.search.worker STUDY --trials N [--index I] [--runs DIR]
        [--storage URL] [--deadline UNIX_TIME]

Each trial: a reference point (base RNN or attention, as enqueued), an enqueued grid
point, or a spec drawn by suggest_spec; infeasible under the space's state budget ->
pruned before training; the same spec as a finished trial -> that trial's result, not
trained again; otherwise built and trained at each learning rate and seed of the space
(objective.evaluate). Each finished (rate, seed) run is written to the trial at once
(a user attribute `run lr=... seed=...`, or `final lr=... seed=...` for a best-rate run
trained on to the budget); a trial run again after its worker died takes the runs its
earlier tries wrote (found by the `runs_of` attribute), and those the study took from
another (`--reuse-runs`), and trains the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.trial import TrialState

from mcgen.mqar.data import default_cache_dir
from mcgen.search import study as studies
from mcgen.search import trials
from mcgen.search.checkpoints import candidate_checkpoints
from mcgen.search.database import PatientStorage
from mcgen.search.errors import SearchError
from mcgen.search.objective import (
    Evaluation,
    attention_baseline,
    attention_model_cost,
    base_rnn_spec,
    evaluate,
    model_cost,
    runs_in,
)
from mcgen.search.reuse import REUSED_RUNS
from mcgen.search.space import SearchSpace, suggest_spec
from mcgen.search.trials import RUNS_OF

# A worker whose trials fail this many times in a row stops (exit code 1).
MAX_FAILURES_IN_A_ROW = 3

# Trial user attributes written by score_trial.
RESULT_ATTRS = (
    "accuracy",
    "cost",
    "best_lr",
    "per_slice",
    "by_lr",
    "spread",
    "lr_status",
    "decode_state_bytes",
)


@dataclass(frozen=True)
class WorkerResult:
    index: int
    ran: int  # trials this worker finished (complete or pruned)
    failed: int  # trials this worker failed
    reason: str  # "done" | "deadline" | "failing"

    @property
    def exit_code(self) -> int:
        return 1 if self.reason == "failing" else 0


def _say(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"{stamp} {message}", flush=True)


def _constrain(trial: optuna.Trial, space: SearchSpace, state_bytes: float) -> bool:
    """Record the state budget as an Optuna constraint (feasible when <= 0); whether
    the trial is feasible."""
    budget = space.objectives.max_decode_state_bytes
    trial.set_user_attr("decode_state_bytes", state_bytes)
    if budget is None:
        return True
    trial.set_constraint("decode_state_bytes", state_bytes - budget)
    return state_bytes <= budget


def _same_spec(study: optuna.Study, name: str) -> optuna.trial.FrozenTrial | None:
    for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if other.user_attrs.get("spec_name") == name and "accuracy" in other.user_attrs:
            return other
    return None


def _record(trial: optuna.Trial, result: Evaluation, seconds: float) -> list[float]:
    trial.set_user_attr("accuracy", result.accuracy)
    trial.set_user_attr("cost", result.cost)
    trial.set_user_attr("best_lr", result.best_lr)
    trial.set_user_attr("per_slice", dict(result.per_slice))
    trial.set_user_attr("by_lr", {repr(lr): acc for lr, acc in result.by_lr.items()})
    trial.set_user_attr("spread", result.spread)
    trial.set_user_attr("lr_status", result.lr_status)
    trial.set_user_attr("seconds", round(seconds, 2))
    return [result.accuracy, result.cost]


def done_runs(study: optuna.Study, runs_of: str) -> dict[str, dict]:
    """The runs every trial of `runs_of` wrote (a failed try's included), and those the
    study took from another one (reuse.REUSED_RUNS): key -> JSON."""
    found: dict[str, dict] = dict(study.user_attrs.get(REUSED_RUNS, {}).get(runs_of, {}))
    for other in study.get_trials(deepcopy=False):
        if other.user_attrs.get(RUNS_OF) == runs_of:
            found.update(runs_in(other.user_attrs))
    return found


def _unit_kwargs(
    trial: optuna.Trial, study: optuna.Study, runs_of: str, run_dir: Path
) -> dict[str, Any]:
    """evaluate's done_runs, on_run and checkpoints for a trial: resume from earlier tries'
    runs (copied into this trial, so that a complete trial holds all its runs), write each
    new run to the trial (the journal) as soon as it ends, and keep where its running runs
    stand in the study's folder run_dir, where a later try goes on from them."""
    trial.set_user_attr(RUNS_OF, runs_of)
    done = done_runs(study, runs_of)
    for key, run in done.items():
        trial.set_user_attr(key, run)
    states = candidate_checkpoints(run_dir, runs_of)
    return {"done_runs": done, "on_run": trial.set_user_attr, "checkpoints": states}


def attention_runs_of(width: int | None) -> str:
    """Whose runs an attention reference's are (trials.RUNS_OF)."""
    return f"attention d_model={width}"


def candidate_mapping(trial: Any, space: SearchSpace, reference: str | None, width: Any) -> dict:
    """The spec a trial scores: a reference base RNN's, or the one its parameters draw
    (`trial` an optuna trial or a FixedTrial of an enqueued one's parameters). Its name
    is whose runs the trial's are."""
    if reference == "base_rnn":
        return base_rnn_spec(space, d_model=width)
    return suggest_spec(trial, space)


def score_trial(
    trial: optuna.Trial,
    study: optuna.Study,
    space: SearchSpace,
    workdir: Path,
    data_cache: Path | None,
    run_dir: Path,
) -> list[float]:
    """[accuracy, cost] of one trial; raises optuna.TrialPruned for an infeasible one.
    run_dir: the study's folder, where its running runs' states are kept (_unit_kwargs)."""
    started = time.perf_counter()
    reference = trial.user_attrs.get(trials.REFERENCE)
    width = trial.user_attrs.get(trials.WIDTH)
    if reference == "attention":
        _constrain(trial, space, attention_model_cost(space, "decode_state_bytes", width))
        units = _unit_kwargs(trial, study, attention_runs_of(width), run_dir)
        result = attention_baseline(space, data_cache=data_cache, d_model=width, **units)
        return _record(trial, result, time.perf_counter() - started)

    mapping = candidate_mapping(trial, space, reference, width)
    text = yaml.safe_dump(mapping, sort_keys=False)
    trial.set_user_attr("spec_name", mapping["name"])
    trial.set_user_attr("spec", text)
    feasible = _constrain(trial, space, model_cost(text, space, "decode_state_bytes"))
    if not feasible and reference is None:
        raise optuna.TrialPruned("over the decode state budget: not trained")
    previous = _same_spec(study, mapping["name"])
    if previous is not None:
        for key in (*RESULT_ATTRS, "seconds"):
            if key in previous.user_attrs:
                trial.set_user_attr(key, previous.user_attrs[key])
        trial.set_user_attr("reused_from", previous.number)
        return list(previous.values)
    units = _unit_kwargs(trial, study, mapping["name"], run_dir)
    result = evaluate(mapping, space, workdir, data_cache=data_cache, **units)
    return _record(trial, result, time.perf_counter() - started)


@contextlib.contextmanager
def _heartbeat(
    storage: optuna.storages.BaseStorage, study: optuna.Study, number: int
) -> Iterator[None]:
    """On a database storage, record this trial's heartbeat while it runs."""
    if not isinstance(storage, PatientStorage):
        yield
        return
    trial_id = trials.trial_id(storage, study, number)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(studies.HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a missed beat is not fatal
                storage.record_heartbeat(trial_id)

    thread = threading.Thread(target=beat, name=f"heartbeat-{number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _seed(name: str, index: int, pid: int) -> int:
    digest = hashlib.sha256(f"{name}:{index}:{pid}:{time.time()}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _describe(trial: optuna.trial.FrozenTrial) -> str:
    label = trials.trial_label(trial)
    if trial.state == TrialState.COMPLETE:
        accuracy, cost = trial.values
        reused = trial.user_attrs.get("reused_from")
        note = f" (same spec as trial {reused})" if reused is not None else ""
        return f"trial {trial.number} [{label}]: accuracy {accuracy:.4f}, cost {cost:.4g}{note}"
    why = trial.user_attrs.get(trials.FAILURE, "")
    return f"trial {trial.number} [{label}]: {trial.state.name.lower()} {why}".rstrip()


def _finished(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def run_worker(
    location: studies.StudyLocation,
    *,
    target: int,
    index: int = 0,
    deadline: float | None = None,
    workdir: Path | None = None,
    data_cache: Path | None = None,
    poll_s: float = 1.0,
) -> WorkerResult:
    """Claim and score trials until the study has `target` done trials, the deadline
    (a time.time()) passes, or MAX_FAILURES_IN_A_ROW trials in a row fail.

    Torch runs on one thread here. An interrupt (Ctrl-C, SIGTERM) fails the trial this
    worker holds, enqueues it again and re-raises."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Seeded per process: parallel workers must not draw the same startup points.
    seed = _seed(location.name, index, os.getpid())
    study, storage, space = studies.load_study(location, sampler=studies.make_sampler(seed))
    workdir = workdir or location.run_dir / "work" / f"w{index}"
    data_cache = data_cache or default_cache_dir()
    token = studies.worker_token(index)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ran = failed = in_a_row = 0
        waiting_said = False
        while True:
            if deadline is not None and time.time() >= deadline:
                _say(f"worker {index}: deadline reached, {ran} trials run")
                return WorkerResult(index, ran, failed, "deadline")
            with _interrupts_held():
                claimed = studies.claim_trial(study, storage, location, target=target, token=token)
            if claimed == studies.STOP:
                _say(f"worker {index}: the study has {target} trials; {ran} run here")
                return WorkerResult(index, ran, failed, "done")
            if claimed == studies.WAIT:
                if not waiting_said:
                    _say(f"worker {index}: the last trials run elsewhere; waiting")
                    waiting_said = True
                time.sleep(poll_s)
                continue
            waiting_said = False
            assert isinstance(claimed, optuna.Trial)
            trial = claimed
            try:
                with _heartbeat(storage, study, trial.number):
                    values = score_trial(trial, study, space, workdir, data_cache, location.run_dir)
            except optuna.TrialPruned:
                study.tell(trial, state=TrialState.PRUNED)
                ran, in_a_row = ran + 1, 0
            except SearchError:
                raise  # the study's storage failed, not the candidate: stop (rerun recovers)
            except Exception as exc:  # a candidate that breaks fails alone
                trial.set_user_attr(trials.FAILURE, f"{type(exc).__name__}: {exc}"[:2000])
                traceback.print_exc()
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    study.tell(trial, state=TrialState.FAIL)  # unless failed already as stale
                failed, in_a_row = failed + 1, in_a_row + 1
                _say(_describe(_finished(study, trial.number)))
                if in_a_row >= MAX_FAILURES_IN_A_ROW:
                    _say(f"worker {index}: {in_a_row} trials in a row failed; stopping")
                    return WorkerResult(index, ran, failed, "failing")
                continue
            else:
                try:
                    study.tell(trial, values=values)
                except optuna.exceptions.UpdateFinishedTrialError:
                    _say(f"trial {trial.number} was failed as stale meanwhile; its retry counts")
                    continue
                ran, in_a_row = ran + 1, 0
            _say(_describe(_finished(study, trial.number)))
    except (KeyboardInterrupt, SystemExit):
        _give_back(study, storage, token, index)
        raise
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back while a trial is claimed: its ask and the worker's
    token written on it happen together, so an interrupt finds the trial by the token."""
    interrupts = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, interrupts)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a held one is raised here


def _give_back(
    study: optuna.Study, storage: optuna.storages.BaseStorage, token: dict[str, Any], index: int
) -> None:
    """Fail and enqueue again each running trial this worker holds: the one it scores,
    or one it had just claimed when the interrupt came."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get(trials.WORKER) != token:
            continue
        if trials.fail_and_requeue(study, storage, trial, "interrupted; enqueued again"):
            _say(f"worker {index}: interrupted during trial {trial.number}; enqueued again")


class SignalInterrupt(KeyboardInterrupt):
    """A signal (SIGTERM) stopping the process as Ctrl-C does, with the exit status a
    shell gives a process that signal ended (128 + its number: 143 for SIGTERM), so a
    scheduler or script tells a termination from a Ctrl-C (130)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.exit_code = 128 + signum


def raise_interrupt(signum: int, frame: Any) -> None:
    """A signal handler that stops the process as Ctrl-C does (SIGTERM: workers fail and
    enqueue their trial again; `mcgen search run` stops its workers)."""
    raise SignalInterrupt(signum)


def interrupt_exit_code(interrupt: KeyboardInterrupt) -> int:
    """The exit status for an interrupt: 130 for Ctrl-C, 128 + the signal's for others."""
    return interrupt.exit_code if isinstance(interrupt, SignalInterrupt) else 130


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mcgen.search.worker", description=__doc__)
    parser.add_argument("study")
    parser.add_argument("--trials", type=int, required=True, help="done trials to reach")
    parser.add_argument("--index", type=int, default=0, help="this worker's number")
    parser.add_argument("--runs", type=Path, default=studies.DEFAULT_RUNS)
    parser.add_argument("--storage", default=None, help="a database URL (default: journal)")
    parser.add_argument("--deadline", type=float, default=None, help="stop claiming after")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, raise_interrupt)
    location = studies.locate(args.study, storage=args.storage, runs_dir=args.runs)
    try:
        result = run_worker(location, target=args.trials, index=args.index, deadline=args.deadline)
    except KeyboardInterrupt as interrupt:
        return interrupt_exit_code(interrupt)
    except SearchError as exc:
        print(exc, file=sys.stderr)
        return 2
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
