"""A study in a database rides out a short outage of the server (each storage call is
tried again, then a clear error), and the search goes on once the server is back.

The tests that stop and start the server need MCGEN_TEST_POSTGRES_URL and
MCGEN_TEST_POSTGRES_CTL (the pg_ctl command of that server, run as its user); .ci/run
sets both. The bounded wait needs no server at all."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from search_hooks import Hub
from typer.testing import CliRunner

from mcgen.cli import app
from mcgen.search import database
from mcgen.search import study as studies
from mcgen.search.study import SearchError, locate, study_lock
from mcgen.search.trials import FAILURE, WORKER

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "search" / "tiny.yaml"
POSTGRES = os.environ.get("MCGEN_TEST_POSTGRES_URL")
POSTGRES_CTL = os.environ.get("MCGEN_TEST_POSTGRES_CTL")
needs_server_control = pytest.mark.skipif(
    not (POSTGRES and POSTGRES_CTL),
    reason="stopping a PostgreSQL server needs MCGEN_TEST_POSTGRES_URL and "
    "MCGEN_TEST_POSTGRES_CTL (.ci/run starts a server and sets both)",
)


@pytest.fixture(autouse=True)
def data_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MCGEN_CACHE", str(tmp_path / "cache"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A PostgreSQL URL whose port refuses connections (bound here, never listening)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield f"postgresql://mcgen:secret@127.0.0.1:{holder.getsockname()[1]}/postgres"


def test_an_unreachable_database_is_tried_again_then_a_clear_error(
    refused_url, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(database, "PATIENCE_S", 0.6)
    with pytest.raises(database.DatabaseUnavailable) as raised:
        locate("s", storage=refused_url, runs_dir=tmp_path).open(create=True)
    message = str(raised.value)
    assert "did not answer for 0.6 s" in message and "Connection refused" in message
    assert "rerun the same command" in message and "secret" not in message
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and "trying again for up to 0.6 s" in said[0]
    assert isinstance(raised.value, SearchError)


def _raised_while_handling(error: BaseException, handling: BaseException) -> BaseException:
    """`error` as Python leaves it when raised in an except block of `handling`."""
    try:
        try:
            raise handling
        except type(handling):
            raise error  # noqa: B904 (the implicit context is the point)
    except type(error) as raised:
        return raised


def test_a_query_after_a_dropped_connection_counts_as_the_outage():
    # Optuna's get_trials runs a second query when its first fails; after a dropped
    # connection that one meets PendingRollbackError, which Optuna wraps in its own.
    import psycopg2
    import sqlalchemy.exc

    def wrapped(pending: BaseException) -> BaseException:
        error = optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
        error.__cause__ = pending
        return error

    dropped = sqlalchemy.exc.OperationalError(
        "SELECT 1", {}, psycopg2.OperationalError("server closed the connection unexpectedly")
    )
    refused = sqlalchemy.exc.IntegrityError(
        "INSERT", {}, psycopg2.IntegrityError("duplicate key value violates unique constraint")
    )
    pending = sqlalchemy.exc.PendingRollbackError("Can't reconnect until invalid transaction")
    assert database.is_outage(wrapped(_raised_while_handling(pending, dropped)))
    assert not database.is_outage(wrapped(_raised_while_handling(pending, refused)))
    assert not database.is_outage(wrapped(pending))


def test_the_search_command_reports_an_unreachable_database_in_one_line(
    refused_url, tmp_path, monkeypatch
):
    monkeypatch.setattr(database, "PATIENCE_S", 0.3)
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY.read_text(encoding="utf-8"), encoding="utf-8")
    runner = CliRunner()
    for args in (["search", str(space)], ["search", "report", "tiny"]):
        result = runner.invoke(app, [*args, "--storage", refused_url, "--runs", str(tmp_path)])
        assert result.exit_code == 1, result.output
        assert "did not answer for 0.3 s" in result.output
        assert "Traceback" not in result.output and "OperationalError" not in result.output


def test_a_refusal_is_not_taken_for_an_outage(tmp_path):
    # A request the database refuses (here: no such table) fails at once.
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(optuna.exceptions.StorageInternalError):
        locate("s", storage=url, runs_dir=tmp_path).open(create=False).get_all_studies()


def pg_ctl(action: str) -> None:
    assert POSTGRES_CTL is not None
    subprocess.run([*shlex.split(POSTGRES_CTL), action, "-w", "-m", "fast"], check=True)


@pytest.fixture
def server() -> Iterator[None]:
    """The test server, started again whatever the test did to it."""
    yield
    status = subprocess.run([*shlex.split(POSTGRES_CTL or ""), "status"], capture_output=True)
    if status.returncode != 0:
        pg_ctl("start")


@needs_server_control
def test_storage_calls_and_the_study_lock_wait_for_a_restarted_server(server, monkeypatch):
    location = locate(f"pg_{uuid.uuid4().hex[:12]}", storage=POSTGRES)
    storage = location.open(create=True)
    optuna.create_study(storage=storage, study_name=location.name, directions=["maximize"])
    failed_once = threading.Event()
    said: list[str] = []

    def notify(message: str) -> None:
        said.append(message)
        failed_once.set()

    monkeypatch.setattr(database, "notify", notify)
    names: list[str] = []

    def under_the_lock() -> None:
        with study_lock(location):
            names.extend(s.study_name for s in storage.get_all_studies())

    pg_ctl("stop")
    caller = threading.Thread(target=under_the_lock)
    caller.start()
    while not failed_once.wait(0.1):  # until the call has met the outage
        assert caller.is_alive(), "the call ended without meeting the stopped server"
    pg_ctl("start")
    caller.join()
    assert location.name in names
    assert "did not answer" in said[0] and "answers again" in said[-1]


def worker_pids(runs: Path, study: str) -> set[int]:
    found, _, _ = studies.load_study(locate(study, storage=POSTGRES, runs_dir=runs))
    return {
        t.user_attrs[WORKER]["pid"]
        for t in found.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    }


@pytest.mark.slow
@needs_server_control
def test_a_search_rides_out_a_server_restart(server, tmp_path):
    """Two workers, each held inside a trial; the server stops; the coordinator and
    then each released worker meet the outage; the server starts again; the search
    ends with every trial done once and none failed."""
    space = tmp_path / "outage.yaml"
    mapping = yaml.safe_load(TINY.read_text(encoding="utf-8"))
    space.write_text(yaml.safe_dump({**mapping, "name": "outage"}), encoding="utf-8")
    runs, study = tmp_path / "runs", f"pg_{uuid.uuid4().hex[:12]}"
    hub = Hub()
    try:
        hub.start(
            ["search", str(space), "--study", study, "--trials", "5", "--workers", "2"]
            + ["--storage", POSTGRES or "", "--runs", str(runs)]
        )
        held = [hub.until(lambda m: m.kind == "training")[-1] for _ in range(2)]
        workers = {m.pid for m in held}
        assert worker_pids(runs, study) == workers  # both trials are running
        pg_ctl("stop")
        coordinator = hub.process.pid if hub.process else 0
        hub.until(lambda m: m.kind == "notice" and m.pid == coordinator)
        for message in held:
            message.answer()  # each trains, then meets the stopped server
        waiting: set[int] = set()
        while waiting != workers:
            message = hub.until(lambda m: m.kind == "notice" and m.pid in workers)[-1]
            waiting.add(message.pid)
        pg_ctl("start")
        output = hub.let_run()
    finally:
        hub.close()
    assert hub.process is not None and hub.process.returncode == 0, output
    assert "did not answer" in output and "answers again" in output
    found, _, _ = studies.load_study(locate(study, storage=POSTGRES, runs_dir=runs))
    trials = found.get_trials(deepcopy=False)
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 5
    assert not [t for t in trials if t.state != TrialState.COMPLETE], [
        (t.number, t.state, t.user_attrs.get(FAILURE)) for t in trials
    ]
