"""A multi-objective Optuna study over a search space: where it lives, creating it once,
its reference points, claiming trials so that the total is exact, stale trials, and the
local run (N worker processes, progress).

Storage: a journal file runs/<study>/journal.log by default (one machine, several
processes; a record cut short by a crash is cut back at the next write: .journal), or an
RDB URL (postgresql://... for many machines sharing one study; every call rides out a
short outage of the server: .database).
Trials: accuracy is maximised, the space's cost minimised. The reference points (base
RNN and softmax attention of the same width) are enqueued when the study is opened.

Counting: a trial is *done* when COMPLETE or PRUNED (an infeasible candidate, pruned
before training). A worker claims a trial only while done + running < target, under a
lock (a file lock for the journal, an advisory lock on PostgreSQL), so the study ends
with exactly `target` done trials; a trial that fails is replaced, and one whose worker
died is failed and enqueued again (same parameters) when that is noticed.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mcgen import __version__
from mcgen.search.database import PatientStorage, is_outage, patiently
from mcgen.search.errors import SearchError
from mcgen.search.journal import SafeJournalBackend, check_journal, repair_torn_tail
from mcgen.search.objective import require_cost
from mcgen.search.space import SearchSpace, grid_points, load_space, parse_space
from mcgen.search.space import widths as space_widths

try:  # advisory file locks (POSIX); elsewhere the rank check below keeps counts exact
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

DEFAULT_RUNS = Path("runs")
JOURNAL = "journal.log"
DIRECTIONS = ("maximize", "minimize")
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)

# User attributes of a trial.
REFERENCE = "reference"  # "base_rnn" | "attention": a reference point, not a draw
WIDTH = "width"  # the reference point's d_model
WORKER = "worker"  # who ran it: {"host", "pid", "index", "boot", "start"}
RETRY_OF = "retry_of"  # the number of the trial this one re-runs
GRID = "grid"  # an enqueued point of a grid space
FAILURE = "failure"  # why a trial failed
# What a re-enqueued trial keeps of the one it replaces.
_CARRIED = (REFERENCE, WIDTH, GRID)

# RDB storages: a running trial's worker writes a heartbeat this often (seconds); one
# silent for the grace period is failed and enqueued again by the next worker to look.
HEARTBEAT_S = 20
GRACE_S = 120
# A running trial with no worker recorded (the worker died between asking and
# recording itself) is stale after this long.
_UNOWNED_GRACE_S = 120

_STUDY_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")


# --- where a study lives ---------------------------------------------------------------


@dataclass(frozen=True)
class StudyLocation:
    """A study's name, its storage (a journal file, or an RDB URL) and its local folder
    runs/<study>/ (journal, worker logs, build folders, report)."""

    name: str
    run_dir: Path
    url: str | None = None  # None: the journal file run_dir/journal.log

    @property
    def journal(self) -> Path:
        return self.run_dir / JOURNAL

    def describe(self) -> str:
        """The storage, for people (a URL's password hidden)."""
        if self.url is None:
            return str(self.journal)
        from sqlalchemy.engine import make_url

        return make_url(self.url).render_as_string(hide_password=True)

    def exists(self) -> bool:
        """Whether the study is there (for the journal: whether its file is)."""
        if self.url is None and not self.journal.is_file():
            return False
        try:
            return self.name in optuna.get_all_study_names(self.open(create=False))
        except Exception:  # an unreachable database is reported when it is opened
            return False

    def open(self, *, create: bool) -> optuna.storages.BaseStorage:
        """The Optuna storage. create=False never creates tables (parallel creation
        races on an empty database): workers open a storage the coordinator made."""
        if self.url is None:
            if self.journal.is_file():
                check_journal(self.journal)  # an empty or damaged one is not a new study
            elif not create:
                raise SearchError(f"no study {self.name!r}: {self.journal} does not exist")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(SafeJournalBackend(self.journal))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return PatientStorage(
                self.url,
                self.describe(),
                engine_kwargs={"pool_pre_ping": True},  # replace connections the server dropped
                skip_table_creation=not create,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=_requeue_stale,
            )


def locate(
    study: str, *, storage: str | None = None, runs_dir: str | Path = DEFAULT_RUNS
) -> StudyLocation:
    """The study's location: its journal file runs/<study>/journal.log, or `storage`, a
    database URL (postgresql://user@host:port/db, sqlite:///path.db)."""
    if not _STUDY_NAME.match(study):
        raise SearchError(
            f"study name {study!r}: use letters, digits, '_', '.' and '-' (at most 100, "
            "not starting with '.' or '-'): it names the folder runs/<study>/"
        )
    if storage is not None and "://" not in storage:
        raise SearchError(
            f"--storage {storage!r} is not a database URL (postgresql://user@host/db, "
            f"sqlite:///file.db); without --storage the study is kept in "
            f"{Path(runs_dir) / study / JOURNAL}"
        )
    return StudyLocation(study, Path(runs_dir) / study, _with_driver(storage))


def _with_driver(url: str | None) -> str | None:
    """postgresql://... with the PostgreSQL driver that is installed named in it
    (SQLAlchemy's default driver differs between versions: psycopg2, then psycopg)."""
    if url is None:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise SearchError(f"--storage: {exc}") from None
    if parsed.drivername not in ("postgresql", "postgres"):
        return url
    for module in ("psycopg", "psycopg2"):
        if importlib.util.find_spec(module) is not None:
            named = parsed.set(drivername=f"postgresql+{module}")
            return named.render_as_string(hide_password=False)
    raise SearchError(
        "--storage postgresql://... needs a PostgreSQL driver: pip install psycopg2-binary "
        "(or psycopg[binary])"
    )


_engines: dict[str, Any] = {}


@contextlib.contextmanager
def study_lock(location: StudyLocation) -> Iterator[None]:
    """Mutual exclusion between the processes of one study, on every machine: a file
    lock beside the journal, or a PostgreSQL advisory lock. Other databases get none
    (claim_trial's rank check then discards the rare surplus trial)."""
    if location.url is None:
        if fcntl is None:  # pragma: no cover
            yield
            return
        location.run_dir.mkdir(parents=True, exist_ok=True)
        with open(location.run_dir / "study.lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if not location.url.startswith(("postgresql", "postgres")):
        yield
        return
    import sqlalchemy

    engine = _engines.get(location.url)
    if engine is None:
        engine = sqlalchemy.create_engine(location.url, poolclass=sqlalchemy.pool.NullPool)
        _engines[location.url] = engine
    digest = hashlib.sha256(f"mcgen.search:{location.name}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    connection = patiently(lambda: _advisory_lock(engine, key), location.describe())
    try:
        yield
    finally:
        _advisory_unlock(connection, key)


def _advisory_lock(engine: Any, key: int) -> Any:
    """A connection holding PostgreSQL's advisory lock `key` (waiting for it)."""
    import sqlalchemy

    connection = engine.connect()
    try:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
    except BaseException:
        connection.close()
        raise
    return connection


def _advisory_unlock(connection: Any, key: int) -> None:
    import sqlalchemy

    try:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        connection.commit()
    except Exception as exc:
        if not is_outage(exc):
            raise
        # The server dropped the session, and the lock with it: nothing left to release.
    finally:
        connection.close()


# --- workers, alive or not ---------------------------------------------------------------


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), "" if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def worker_token(index: int) -> dict[str, Any]:
    """Who runs a trial: enough to tell later, on this host, whether it still runs."""
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "index": index,
        "boot": _boot_id(),
        "start": _process_start(pid),
    }


def worker_alive(token: dict[str, Any]) -> bool | None:
    """True or False for a worker of this host; None (unknown) for another host's."""
    if token.get("host") != socket.gethostname():
        return None
    if token.get("boot") and token["boot"] != _boot_id():
        return False  # the machine restarted since
    pid = int(token.get("pid", 0))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return False  # exited, not yet reaped
    return not token.get("start") or fields[19] == token["start"]  # else: pid reused


# --- trials --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    complete: int = 0
    pruned: int = 0
    running: int = 0
    waiting: int = 0
    failed: int = 0

    @property
    def done(self) -> int:
        return self.complete + self.pruned


def counts(study: optuna.Study) -> Counts:
    tally = {state: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        tally[trial.state] += 1
    return Counts(
        complete=tally[TrialState.COMPLETE],
        pruned=tally[TrialState.PRUNED],
        running=tally[TrialState.RUNNING],
        waiting=tally[TrialState.WAITING],
        failed=tally[TrialState.FAIL],
    )


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue a trial again: the same parameters (and reference flag), a new number."""
    params = dict(trial.params) or dict(trial.system_attrs.get("fixed_params", {}))
    attrs = {k: trial.user_attrs[k] for k in _CARRIED if k in trial.user_attrs}
    attrs[RETRY_OF] = trial.number
    study.enqueue_trial(params=params, user_attrs=attrs)


def _requeue_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """The RDB heartbeat's callback: a trial gone silent is failed, then run again."""
    requeue(study, trial)


def _trial_id(storage: optuna.storages.BaseStorage, study: optuna.Study, number: int) -> int:
    study_id = storage.get_study_id_from_name(study.study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def fail_and_requeue(
    study: optuna.Study, storage: optuna.storages.BaseStorage, trial: FrozenTrial, why: str
) -> bool:
    """Mark a running trial FAIL (saying why) and enqueue it again; False if it had
    finished meanwhile."""
    trial_id = _trial_id(storage, study, trial.number)
    try:
        storage.set_trial_user_attr(trial_id, FAILURE, why)
        if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    requeue(study, trial)
    return True


def recover_stale(study: optuna.Study, storage: optuna.storages.BaseStorage) -> list[int]:
    """Fail and re-enqueue the running trials whose worker is gone: a process of this
    host that ended (killed, crashed), or, on an RDB storage, any worker whose
    heartbeat stopped. Returns the numbers of the trials failed. Call under study_lock."""
    failed = []
    now = datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        token = trial.user_attrs.get(WORKER)
        if token is None:
            started = trial.datetime_start or now
            gone = (now - started).total_seconds() > _UNOWNED_GRACE_S
        else:
            gone = worker_alive(token) is False
        if gone and fail_and_requeue(
            study, storage, trial, "its worker process ended before finishing it"
        ):
            failed.append(trial.number)
    if isinstance(storage, PatientStorage):  # a database: heartbeats
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    return failed


def reference_points(space: SearchSpace) -> list[dict[str, Any]]:
    """The user attributes of each reference trial: the base RNN and softmax attention,
    at every width the space can draw (its choices of layer.d_model, in vary or in a
    bundle, else the base's). A grid has its base RNNs among its points: attention only."""
    kinds = ("attention",) if space.sampler == "grid" else ("base_rnn", "attention")
    return [{REFERENCE: kind, WIDTH: width} for width in space_widths(space) for kind in kinds]


def enqueue_grid(study: optuna.Study, space: SearchSpace) -> int:
    """Enqueue every distinct candidate of a grid space once (when the study is made);
    returns how many. Call under study_lock."""
    points = grid_points(space)
    for params in points:
        study.enqueue_trial(params=params, user_attrs={GRID: True})
    return len(points)


def ensure_references(study: optuna.Study, space: SearchSpace) -> list[dict[str, Any]]:
    """Enqueue each reference point that is not already done, running or waiting (one
    that failed is enqueued again). Returns those enqueued. Call under study_lock."""
    present = {
        (t.user_attrs[REFERENCE], t.user_attrs.get(WIDTH))
        for t in study.get_trials(deepcopy=False)
        if REFERENCE in t.user_attrs and t.state != TrialState.FAIL
    }
    added = []
    for attrs in reference_points(space):
        if (attrs[REFERENCE], attrs[WIDTH]) not in present:
            study.enqueue_trial(params={}, user_attrs=attrs)
            added.append(attrs)
    return added


def make_sampler(seed: int | None = None) -> optuna.samplers.BaseSampler:
    """Multi-objective TPE over the conditional space (top_k exists for ssc only...);
    constant_liar keeps parallel workers from drawing the same point."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=True
        )


def _space_json(space: SearchSpace) -> str:
    return json.dumps(space.model_dump(mode="json"), sort_keys=True)


def open_study(
    location: StudyLocation, space: SearchSpace, space_text: str, *, target: int | None = None
) -> tuple[optuna.Study, list[int]]:
    """Create the study if it is new, or load it (load_if_exists), once, before any
    worker starts; check it was run with this space; fail and re-enqueue stale trials;
    enqueue the missing reference points (and, for a new grid study, every point). The
    space's YAML is kept in the study, so workers and reports need only the study.
    Returns the study and the numbers of the stale trials it failed and enqueued again."""
    with study_lock(location):
        storage = location.open(create=True)
        if location.url is None:
            repair_torn_tail(location.journal)  # a resume after a crash mid-write
        study = optuna.create_study(
            storage=storage,
            study_name=location.name,
            directions=list(DIRECTIONS),
            load_if_exists=True,
            sampler=make_sampler(),
        )
        stored = study.user_attrs.get("space_json")
        if stored is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(["accuracy", space.objectives.cost])
            study.set_user_attr("space_yaml", space_text)
            study.set_user_attr("space_json", _space_json(space))
            study.set_user_attr("space_name", space.name)
            study.set_user_attr("mcgen_version", __version__)
        elif stored != _space_json(space):
            before, now = json.loads(stored), json.loads(_space_json(space))
            changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
            raise SearchError(
                f"study {location.name!r} ({location.describe()}) was started with another "
                f"search space (it differs in: {', '.join(changed)}); give --study NAME to "
                "start a new study, or the space file this one was started with"
            )
        if target is not None:
            study.set_user_attr("target", target)
        recovered = recover_stale(study, storage)
        ensure_references(study, space)
        if stored is None and space.sampler == "grid":  # a new grid study: its points
            study.set_user_attr("grid_points", enqueue_grid(study, space))
    return study, recovered


def load_study(
    location: StudyLocation, *, sampler: optuna.samplers.BaseSampler | None = None
) -> tuple[optuna.Study, optuna.storages.BaseStorage, SearchSpace]:
    """An existing study, its storage and its space (as the study recorded it)."""
    storage = location.open(create=False)
    if location.name not in optuna.get_all_study_names(storage):
        raise SearchError(f"no study {location.name!r} in {location.describe()}")
    study = optuna.load_study(study_name=location.name, storage=storage, sampler=sampler)
    text = study.user_attrs.get("space_yaml")
    if text is None:
        raise SearchError(
            f"study {location.name!r} in {location.describe()} was not made by mcgen search"
        )
    return study, storage, parse_space(text, f"<study {location.name}>")


# Claim results besides a trial.
STOP = "stop"  # the study has its trials
WAIT = "wait"  # the rest are running elsewhere; look again later


def claim_trial(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    location: StudyLocation,
    *,
    target: int,
    token: dict[str, Any],
) -> optuna.Trial | str:
    """A new trial to run (an enqueued one first), STOP or WAIT.

    Under the study lock: fail stale trials, count, ask, record the worker. Without a
    lock (a database other than PostgreSQL), two workers may both take the last slot:
    the later trial (by number) sees `target` trials ahead of it and is given back."""
    with study_lock(location):
        recover_stale(study, storage)
        now = counts(study)
        if now.done >= target:
            return STOP
        if now.done + now.running >= target:
            return WAIT
        with warnings.catch_warnings():
            # Heartbeats are written by the worker (its own thread), not by optimize.
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
            trial = study.ask()
        trial.set_user_attr(WORKER, token)
        if isinstance(storage, PatientStorage):
            storage.record_heartbeat(_trial_id(storage, study, trial.number))
    return WAIT if surplus(study, trial, target=target) else trial


def surplus(study: optuna.Study, trial: optuna.Trial, *, target: int) -> bool:
    """Whether `target` trials were done or running ahead of this one (by number), as
    when two workers took the last slot at once without a lock. If so the trial is
    given back: failed as surplus, and enqueued again if it was an enqueued one."""
    ahead = [
        t
        for t in study.get_trials(deepcopy=False, states=(*DONE_STATES, TrialState.RUNNING))
        if t.number < trial.number
    ]
    if len(ahead) < target:
        return False
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
    trial.set_user_attr(FAILURE, "surplus: the study had its trials when this one began")
    study.tell(trial, state=TrialState.FAIL)
    if REFERENCE in frozen.user_attrs or RETRY_OF in frozen.user_attrs:
        requeue(study, frozen)
    return True


# --- the local run ---------------------------------------------------------------------------


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
            "finished": self.finished,
            "timed_out": self.timed_out,
            "best_accuracy": self.best_accuracy,
            "attention_accuracy": self.attention_accuracy,
            "seconds": round(self.seconds, 1),
            "run_dir": str(self.run_dir),
            "workers": [
                {"index": w.index, "returncode": w.returncode, "log": str(w.log)}
                for w in self.workers
            ],
        }


def trial_label(trial: FrozenTrial) -> str:
    """A short name: the reference point, or the candidate's varied fields."""
    if REFERENCE in trial.user_attrs:
        kind = {"base_rnn": "base RNN", "attention": "attention"}[trial.user_attrs[REFERENCE]]
        return f"{kind} (d_model {trial.user_attrs.get(WIDTH)})"
    return " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in trial.params.items())


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


def prepare_data(space: SearchSpace) -> None:
    """Generate the space's MQAR data into the cache once, before workers start (the
    needle probe's data is generated by each run: it takes milliseconds)."""
    from mcgen.mqar.data import default_cache_dir, load_data

    if space.mqar is not None:
        load_data(space.mqar, default_cache_dir())


def run_study(
    space_path: str | Path,
    *,
    study: str | None = None,
    trials: int,
    workers: int = 1,
    storage: str | None = None,
    timeout: float | None = None,
    runs_dir: str | Path = DEFAULT_RUNS,
    on_update: Callable[[Snapshot], None] | None = None,
    poll_s: float = 1.0,
    in_process: bool = False,
) -> RunSummary:
    """Run the study of a space file until it has `trials` done trials (the reference
    points included), with `workers` local processes; rerunning continues it.

    in_process: run one worker in this process instead (workers must be 1)."""
    if trials < 1 or workers < 1:
        raise SearchError("--trials and --workers must be at least 1")
    if in_process and workers != 1:
        raise SearchError("in_process runs one worker")
    space_path = Path(space_path)
    space = load_space(space_path)
    require_cost(space)
    text = space_path.read_text(encoding="utf-8")
    location = locate(study or space.name, storage=storage, runs_dir=runs_dir)
    started = time.time()
    study_obj, recovered = open_study(location, space, text, target=trials)
    deadline = started + timeout if timeout is not None else None
    prepare_data(space)

    seen = {t.number for t in study_obj.get_trials(deepcopy=False) if t.state.is_finished()}

    def update() -> None:
        if on_update is None:
            return
        trials_now = study_obj.get_trials(deepcopy=False)
        new = [t for t in trials_now if t.state.is_finished() and t.number not in seen]
        seen.update(t.number for t in new)
        best, attention = _best(study_obj)
        on_update(Snapshot(trials, counts(study_obj), best, attention, [_line(t) for t in new]))

    update()
    exits: list[WorkerExit] = []
    logs = location.run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if in_process:
        from mcgen.search.worker import run_worker

        result = run_worker(location, target=trials, index=0, deadline=deadline)
        exits.append(WorkerExit(0, result.exit_code, logs / "worker-0.log"))
        update()
    else:
        processes = []
        for index in range(workers):
            log_path = logs / f"worker-{index}.log"
            log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed below)
            log.write(f"--- {datetime.now().isoformat(timespec='seconds')} worker {index}\n")
            log.flush()
            command = worker_command(location, target=trials, index=index, deadline=deadline)
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_worker_env(),
                start_new_session=True,  # Ctrl-C reaches the coordinator, which stops them
            )
            processes.append((index, process, log, log_path))
        try:
            while any(p.poll() is None for _, p, _, _ in processes):
                time.sleep(poll_s)
                update()
        except BaseException:
            _stop(processes)
            raise
        finally:
            for _, _, log, _ in processes:
                log.close()
        exits = [WorkerExit(i, p.returncode, path) for i, p, _, path in processes]
        update()
    best, attention = _best(study_obj)
    return RunSummary(
        study=location.name,
        storage=location.describe(),
        space=str(space_path),
        target=trials,
        counts=counts(study_obj),
        best_accuracy=best,
        attention_accuracy=attention,
        workers=exits,
        timed_out=deadline is not None and time.time() >= deadline,
        seconds=time.time() - started,
        run_dir=location.run_dir,
        recovered=recovered,
    )


def _stop(processes: list) -> None:
    """SIGTERM each worker (it fails its trial and enqueues it again), then wait."""
    for _, process, _, _ in processes:
        if process.poll() is None:
            process.terminate()
    for _, process, _, _ in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
