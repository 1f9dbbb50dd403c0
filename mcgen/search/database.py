"""A study kept in a database (PostgreSQL, for many machines sharing one study) that
rides out a short outage of the server.

Optuna's RDBStorage fails a call at once when the server is down or drops the
connection (a restart, a failover): with it, stopping the server for one second killed
the coordinator and every worker. Here each storage call is tried again with a growing
wait (a quarter second, doubling, at most 8 s) while the error says the database could
not be reached; the first failure and the recovery are each said in one line on stderr.
After PATIENCE_S seconds without an answer the call raises DatabaseUnavailable, one line
saying what to do: the study is intact, and rerunning fails and re-enqueues the trials
left running (their worker is gone, or their heartbeat stopped).

The pool checks a connection before lending it (pool_pre_ping), so connections the
server dropped are replaced rather than failing the next call. A write whose answer was
lost with the connection may be repeated: a repeated state change is refused by Optuna
(UpdateFinishedTrialError, which the worker takes as "finished meanwhile"), a repeated
trial creation leaves a running trial with no worker, failed as stale later.
"""

from __future__ import annotations

import abc
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
from optuna.storages import BaseStorage

# Optuna keeps the heartbeat interface in a private module; fail_stale_trials and the
# study's ask() look for it, so a storage with heartbeats must be one.
from optuna.storages._heartbeat import BaseHeartbeat

from mcgen.search.errors import SearchError

PATIENCE_S = 60.0  # how long one call waits for the database to answer again
_FIRST_WAIT_S = 0.25
_LONGEST_WAIT_S = 8.0
_POSTGRES_DRIVERS = ("psycopg2", "psycopg")

T = TypeVar("T")


class DatabaseUnavailable(SearchError):
    """The study's database did not answer for PATIENCE_S seconds."""


def notify(message: str) -> None:
    """One line on stderr (a worker's log, or the terminal of `mcgen search`)."""
    print(message, file=sys.stderr, flush=True)


def is_outage(exc: BaseException) -> bool:
    """Whether an error says the database could not be reached or dropped the
    connection (a retry may cure it), not that it refused the request.

    SQLAlchemy marks a dropped connection (connection_invalidated); a refused connection
    is an OperationalError of the driver. PostgreSQL's drivers keep OperationalError for
    the server's state (unreachable, shutting down, starting up, out of connections);
    SQLite uses it for refusals too ("no such table"), so only PostgreSQL's count.
    A session that goes on after its connection dropped (Optuna's get_trials tries a
    second query when the first fails) meets PendingRollbackError: an outage when the
    error it was handling is one."""
    import sqlalchemy.exc

    if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ is not None:
        exc = exc.__cause__  # Optuna wraps SQLAlchemy's errors in its own
    if isinstance(exc, sqlalchemy.exc.PendingRollbackError):
        return exc.__context__ is not None and is_outage(exc.__context__)
    if not isinstance(exc, sqlalchemy.exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    driver = type(exc.orig).__module__.split(".")[0]
    return isinstance(exc, sqlalchemy.exc.OperationalError) and driver in _POSTGRES_DRIVERS


def _first_line(exc: BaseException) -> str:
    """The driver's own words (psycopg2: 'connection to server ... failed: ...')."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    original = getattr(cause, "orig", None) or cause
    lines = str(original).strip().splitlines()
    return lines[0].strip() if lines else type(original).__name__


def patiently(action: Callable[[], T], where: str) -> T:
    """action(), tried again while the database at `where` is out, for PATIENCE_S
    seconds at most; then DatabaseUnavailable."""
    wait, first_failure = _FIRST_WAIT_S, None
    while True:
        try:
            result = action()
        except Exception as exc:
            if not is_outage(exc):
                raise
            now = time.monotonic()
            if first_failure is None:
                first_failure = now
                notify(
                    f"the study's database {where} did not answer ({_first_line(exc)}); "
                    f"trying again for up to {PATIENCE_S:g} s"
                )
            left = PATIENCE_S - (now - first_failure)
            if left <= 0:
                raise DatabaseUnavailable(
                    f"the study's database {where} did not answer for {PATIENCE_S:g} s "
                    f"({_first_line(exc)}): the study is kept there; rerun the same command "
                    "once it answers (trials left running are then failed and run again)"
                ) from None
            time.sleep(min(wait, left))
            wait = min(2 * wait, _LONGEST_WAIT_S)
            continue
        if first_failure is not None:
            notify(
                f"the study's database {where} answers again "
                f"(after {time.monotonic() - first_failure:.1f} s)"
            )
        return result


class PatientStorage(BaseStorage, BaseHeartbeat):
    """An Optuna RDBStorage (opened with `rdb_options`) whose every call rides out an
    outage of up to PATIENCE_S seconds. `where`: the database, for messages (no password)."""

    def __init__(self, url: str, where: str, **rdb_options: Any) -> None:
        self.where = where
        self.rdb = patiently(lambda: optuna.storages.RDBStorage(url, **rdb_options), where)


def _patient_method(name: str) -> Callable[..., Any]:
    def method(self: PatientStorage, *args: Any, **kwargs: Any) -> Any:
        call = getattr(self.rdb, name)
        return patiently(lambda: call(*args, **kwargs), self.where)

    method.__name__ = method.__qualname__ = name
    return method


# Every method of the storage and heartbeat interfaces (what Optuna's Study and Trial
# call) goes to the RDBStorage through patiently().
_DELEGATED = sorted(
    {name for name in dir(BaseStorage) if not name.startswith("_")}
    | set(BaseHeartbeat.__abstractmethods__)
)
for _name in _DELEGATED:
    setattr(PatientStorage, _name, _patient_method(_name))
abc.update_abstractmethods(PatientStorage)
