"""The local run of a study (`mcgen search run`): open the study once, before any worker
starts; generate its data; run N worker processes on this machine (or one worker in this
process); report progress as trials finish; sum up. Rerunning continues the study.

The study itself (its storage, lock and claims) is mcgen.search.study; one worker is
mcgen.search.worker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from io import TextIOWrapper
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mcgen.search.errors import SearchError
from mcgen.search.objective import require_hardware
from mcgen.search.reuse import reusable_runs, take_runs
from mcgen.search.space import SearchSpace, load_space
from mcgen.search.study import DEFAULT_RUNS, StudyLocation, locate, open_study
from mcgen.search.trials import REFERENCE, WORKER, Counts, counts, trial_label
from mcgen.search.worker import raise_interrupt, run_worker


@dataclass(frozen=True)
class RunOptions:
    """What a local run is asked for (checked when made)."""

    trials: int  # done trials the study should have, reference points included
    study: str | None = None  # the study's name; None: the space's
    workers: int = 1  # local worker processes
    storage: str | None = None  # a database URL; None: the journal runs_dir/<study>/journal.log
    timeout: float | None = None  # start no trial after this many seconds
    runs_dir: str | Path = DEFAULT_RUNS
    poll_s: float = 1.0  # how often the workers' progress is looked at
    in_process: bool = False  # one worker in this process instead (workers must be 1)
    reuse_runs: str | Path | None = None  # a journal whose finished runs are taken (reuse.py)

    def __post_init__(self) -> None:
        if self.trials < 1 or self.workers < 1:
            raise SearchError("--trials and --workers must be at least 1")
        if self.in_process and self.workers != 1:
            raise SearchError("in_process runs one worker")


@dataclass(frozen=True)
class TrialLine:
    """A finished trial, for progress lines."""

    number: int
    state: str
    accuracy: float | None
    cost: float | None
    label: str
    worker: int | None


@dataclass(frozen=True)
class Snapshot:
    """Where a run stands: for a progress bar."""

    target: int
    counts: Counts
    best_accuracy: float | None  # of the memory-caching candidates (attention excluded)
    attention_accuracy: float | None
    finished: list[TrialLine]  # finished since the previous snapshot


@dataclass(frozen=True)
class WorkerExit:
    index: int
    returncode: int
    log: Path


@dataclass(frozen=True)
class RunSummary:
    study: str
    storage: str
    space: str
    target: int
    counts: Counts
    best_accuracy: float | None
    attention_accuracy: float | None
    workers: list[WorkerExit]
    timed_out: bool
    seconds: float
    run_dir: Path
    recovered: list[int] = field(default_factory=list)  # stale trials failed and re-enqueued
    reused: int = 0  # runs the study holds from another one (--reuse-runs)

    @property
    def finished(self) -> bool:
        return self.counts.done >= self.target

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "storage": self.storage,
            "space": self.space,
            "target": self.target,
            "done": self.counts.done,
            "complete": self.counts.complete,
            "pruned": self.counts.pruned,
            "failed": self.counts.failed,
            "failed_run_again": self.counts.rerun,
            "finished": self.finished,
            "timed_out": self.timed_out,
            "best_accuracy": self.best_accuracy,
            "attention_accuracy": self.attention_accuracy,
            "seconds": round(self.seconds, 1),
            "run_dir": str(self.run_dir),
            "reused_runs": self.reused,
            "workers": [
                {"index": w.index, "returncode": w.returncode, "log": str(w.log)}
                for w in self.workers
            ],
        }


def run_study(
    space_path: str | Path,
    options: RunOptions,
    on_update: Callable[[Snapshot], None] | None = None,
) -> RunSummary:
    """Run the study of a space file until it has `options.trials` done trials (the
    reference points included); `on_update` gets a snapshot at the start, as workers
    progress, and at the end."""
    space_path = Path(space_path)
    space = load_space(space_path)
    require_hardware(space)
    text = space_path.read_text(encoding="utf-8")
    location = locate(
        options.study or space.name, storage=options.storage, runs_dir=options.runs_dir
    )
    started = time.time()
    # Another study's runs are checked before this one is opened: a refusal writes nothing.
    source = None if options.reuse_runs is None else Path(options.reuse_runs)
    runs = None if source is None else reusable_runs(source, location.name, space)
    study, recovered = open_study(location, space, text, target=options.trials)
    reused = 0 if source is None else take_runs(study, runs, source)
    deadline = started + options.timeout if options.timeout is not None else None
    prepare_data(space)

    progress = _Progress(study, options.trials, on_update)
    progress.update()
    exits = _run_workers(location, options, deadline, progress.update)
    progress.update()

    best, attention = _best(study)
    return RunSummary(
        study=location.name,
        storage=location.describe(),
        space=str(space_path),
        target=options.trials,
        counts=counts(study),
        best_accuracy=best,
        attention_accuracy=attention,
        workers=exits,
        timed_out=deadline is not None and time.time() >= deadline,
        seconds=time.time() - started,
        run_dir=location.run_dir,
        recovered=recovered,
        reused=reused,
    )


def prepare_data(space: SearchSpace) -> None:
    """Generate the space's MQAR data into the cache once, before workers start (the
    needle probe's data is generated by each run: it takes milliseconds)."""
    from mcgen.mqar.data import default_cache_dir, load_data

    if space.mqar is not None:
        load_data(space.mqar, default_cache_dir())


# --- progress --------------------------------------------------------------------------------


class _Progress:
    """Snapshots for `on_update`: the study's counts and best accuracies, and the trials
    finished since the previous snapshot (those finished before the run are not news)."""

    def __init__(
        self, study: optuna.Study, target: int, on_update: Callable[[Snapshot], None] | None
    ):
        self.study = study
        self.target = target
        self.on_update = on_update
        self.seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}

    def update(self) -> None:
        if self.on_update is None:
            return
        trials_now = self.study.get_trials(deepcopy=False)
        new = [t for t in trials_now if t.state.is_finished() and t.number not in self.seen]
        self.seen.update(t.number for t in new)
        best, attention = _best(self.study)
        lines = [_line(t) for t in new]
        self.on_update(Snapshot(self.target, counts(self.study), best, attention, lines))


def _best(study: optuna.Study) -> tuple[float | None, float | None]:
    best = attention = None
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        accuracy = trial.values[0]
        if trial.user_attrs.get(REFERENCE) == "attention":
            attention = accuracy if attention is None else max(attention, accuracy)
        else:
            best = accuracy if best is None else max(best, accuracy)
    return best, attention


def _line(trial: FrozenTrial) -> TrialLine:
    values = trial.values if trial.state == TrialState.COMPLETE else None
    return TrialLine(
        number=trial.number,
        state=trial.state.name,
        accuracy=values[0] if values else None,
        cost=values[1] if values else None,
        label=trial_label(trial),
        worker=(trial.user_attrs.get(WORKER) or {}).get("index"),
    )


# --- the workers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _LocalWorker:
    """A worker process started here, with the log file it writes to."""

    index: int
    process: subprocess.Popen
    log: TextIOWrapper
    log_path: Path


def _run_workers(
    location: StudyLocation,
    options: RunOptions,
    deadline: float | None,
    on_poll: Callable[[], None],
) -> list[WorkerExit]:
    """Run the workers to their end: one in this process, or `options.workers` processes,
    looked at every `options.poll_s` seconds (on_poll); Ctrl-C stops them all."""
    logs = location.run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if options.in_process:
        result = run_worker(location, target=options.trials, index=0, deadline=deadline)
        return [WorkerExit(0, result.exit_code, logs / "worker-0.log")]
    workers = []
    try:
        with _terminate_as_interrupt():
            for index in range(options.workers):
                workers.append(
                    _start_worker(
                        location, target=options.trials, index=index, deadline=deadline, logs=logs
                    )
                )
            while any(w.process.poll() is None for w in workers):
                time.sleep(options.poll_s)
                on_poll()
    except BaseException:
        _stop(workers)
        raise
    finally:
        for worker in workers:
            worker.log.close()
    return [WorkerExit(w.index, w.process.returncode, w.log_path) for w in workers]


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (`kill`, `timeout`, a job scheduler) stops the run as Ctrl-C does: the
    workers run in sessions of their own, so without this they would go on, orphaned."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; its own caller handles signals
        return
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _start_worker(
    location: StudyLocation, *, target: int, index: int, deadline: float | None, logs: Path
) -> _LocalWorker:
    log_path = logs / f"worker-{index}.log"
    log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed by _run_workers)
    log.write(f"--- {datetime.now().isoformat(timespec='seconds')} worker {index}\n")
    log.flush()
    command = worker_command(location, target=target, index=index, deadline=deadline)
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_worker_env(),
        start_new_session=True,  # Ctrl-C reaches the coordinator, which stops them
    )
    return _LocalWorker(index, process, log, log_path)


def worker_command(
    location: StudyLocation, *, target: int, index: int, deadline: float | None
) -> list[str]:
    """The command line of one local worker process."""
    command = [sys.executable, "-m", "mcgen.search.worker", location.name]
    command += ["--runs", str(location.run_dir.parent), "--trials", str(target)]
    command += ["--index", str(index)]
    if location.url is not None:
        command += ["--storage", location.url]
    if deadline is not None:
        command += ["--deadline", repr(deadline)]
    return command


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # One thread per worker: tiny models run far faster on one thread than on several,
    # and the workers share the machine's cores.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _stop(workers: list[_LocalWorker]) -> None:
    """SIGTERM each worker (it fails its trial and enqueues it again), then wait."""
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.terminate()
    for worker in workers:
        try:
            worker.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()
