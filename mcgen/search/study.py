"""A multi-objective Optuna study over a search space: where it lives, creating it once,
its reference points, claiming trials so that the total is exact, and stale trials. A
trial's records are mcgen.search.trials; the local run (N worker processes, progress)
is mcgen.search.local_run.

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
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mcgen import __version__
from mcgen.search.database import PatientStorage, is_outage, patiently
from mcgen.search.errors import SearchError
from mcgen.search.journal import SafeJournalBackend, check_journal, repair_torn_tail
from mcgen.search.space import SearchSpace, grid_points, parse_space
from mcgen.search.space import widths as space_widths
from mcgen.search.trials import (
    DONE_STATES,
    FAILURE,
    GRID,
    REFERENCE,
    RETRY_OF,
    WIDTH,
    WORKER,
    counts,
    fail_and_requeue,
    requeue,
    trial_id,
)

try:  # advisory file locks (POSIX); elsewhere the rank check below keeps counts exact
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

DEFAULT_RUNS = Path("runs")
JOURNAL = "journal.log"
DIRECTIONS = ("maximize", "minimize")

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


# --- its trials: stale ones, reference points, opening, claiming -----------------------


def _requeue_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """The RDB heartbeat's callback: a trial gone silent is failed, then run again."""
    requeue(study, trial)


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
            storage.record_heartbeat(trial_id(storage, study, trial.number))
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
