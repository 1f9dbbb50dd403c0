"""The study: storage, reference points, exact trial counts with parallel workers on a
journal file (and on PostgreSQL when MCGEN_TEST_POSTGRES_URL is set), failures, stale
trials, resume, the state budget, and the command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from search_hooks import Hub
from typer.testing import CliRunner

import mcgen.search.worker as worker_module
from mcgen.cli import app
from mcgen.search import study as studies
from mcgen.search.database import PatientStorage
from mcgen.search.local_run import RunOptions, run_study
from mcgen.search.objective import HardwareUnavailable, train_device
from mcgen.search.space import load_space
from mcgen.search.study import SearchError, locate, open_study
from mcgen.search.trials import DONE_STATES, REFERENCE, RETRY_OF, WIDTH, WORKER
from mcgen.search.worker import run_worker

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "search" / "tiny.yaml"


@pytest.fixture(autouse=True)
def data_cache(tmp_path, monkeypatch):
    """MQAR data goes to a temporary cache (workers inherit the variable)."""
    monkeypatch.setenv("MCGEN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def write_space(tmp_path: Path, name: str = "tiny", **changes) -> Path:
    """tiny.yaml with top-level sections updated (one level deep)."""
    mapping = yaml.safe_load(TINY.read_text(encoding="utf-8"))
    mapping["name"] = name
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(mapping.get(key), dict):
            mapping[key] = {**mapping[key], **value}
        else:
            mapping[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(mapping, sort_keys=False), encoding="utf-8")
    return path


def trials_of(runs: Path, study: str, storage: str | None = None):
    location = locate(study, storage=storage, runs_dir=runs)
    found, _, _ = studies.load_study(location)
    return found.get_trials(deepcopy=False)


def done(trials) -> list:
    return [t for t in trials if t.state in DONE_STATES]


def assert_exact_and_unique(trials, target: int) -> None:
    """`target` done trials; the reference points each done exactly once; numbers unique."""
    finished = done(trials)
    assert len(finished) == target
    assert len({t.number for t in trials}) == len(trials)
    references = Counter(t.user_attrs[REFERENCE] for t in finished if REFERENCE in t.user_attrs)
    assert references == {"base_rnn": 1, "attention": 1}
    for trial in finished:
        assert trial.state == TrialState.COMPLETE
        assert set(trial.user_attrs) >= {"accuracy", "cost", "best_lr", "per_slice", "worker"}
        assert trial.values[0] == trial.user_attrs["accuracy"]


# --- locations and opening ---------------------------------------------------------------


def test_locations_and_their_errors(tmp_path):
    location = locate("mqar_cpu", runs_dir=tmp_path)
    assert location.journal == tmp_path / "mqar_cpu" / "journal.log"
    assert location.describe() == str(location.journal)
    secret = locate("s", storage="postgresql://me:hunter2@localhost:5432/db")
    assert "hunter2" not in secret.describe() and "localhost:5432/db" in secret.describe()
    with pytest.raises(SearchError, match="study name '../x'"):
        locate("../x", runs_dir=tmp_path)
    with pytest.raises(SearchError, match="not a database URL"):
        locate("s", storage="runs/s/journal.log")
    with pytest.raises(SearchError, match="no study 'absent'"):
        studies.load_study(locate("absent", runs_dir=tmp_path))


def test_open_study_enqueues_references_once_and_refuses_another_space(tmp_path):
    path = write_space(tmp_path)
    space, text = load_space(path), path.read_text()
    location = locate("s", runs_dir=tmp_path / "runs")
    study, recovered = open_study(location, space, text)
    assert recovered == []
    again, _ = open_study(location, space, text)  # a rerun: nothing enqueued twice
    waiting = again.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert sorted(t.user_attrs[REFERENCE] for t in waiting) == ["attention", "base_rnn"]
    assert all(t.user_attrs[WIDTH] == 16 for t in waiting)
    assert study.user_attrs["space_yaml"] == text
    other = write_space(tmp_path, train={"steps": 5})
    with pytest.raises(SearchError, match=r"another search space \(it differs in: train\)"):
        open_study(location, load_space(other), other.read_text())


def test_a_varied_width_gets_references_at_every_width(tmp_path):
    mapping = yaml.safe_load(TINY.read_text())
    del mapping["base"]["layer"]
    mapping["vary"]["layer.d_model"] = [16, 32]
    path = tmp_path / "widths.yaml"
    path.write_text(yaml.safe_dump(mapping))
    points = studies.reference_points(load_space(path))
    assert sorted((p["reference"], p["width"]) for p in points) == [
        ("attention", 16),
        ("attention", 32),
        ("base_rnn", 16),
        ("base_rnn", 32),
    ]


# --- one worker, in this process -----------------------------------------------------------


def test_a_run_then_a_longer_run_continues_the_study(tmp_path):
    path, runs = write_space(tmp_path), tmp_path / "runs"
    first = run_study(path, RunOptions(trials=3, runs_dir=runs, in_process=True))
    assert first.finished and first.counts.done == 3
    second = run_study(path, RunOptions(trials=5, runs_dir=runs, in_process=True))
    assert second.finished and second.counts.done == 5 and second.counts.failed == 0
    trials = trials_of(runs, "tiny")
    assert_exact_and_unique(trials, 5)
    # Asking for fewer than are done runs nothing.
    third = run_study(path, RunOptions(trials=4, runs_dir=runs, in_process=True))
    assert third.counts.done == 5 and len(trials_of(runs, "tiny")) == len(trials)


def test_a_stale_running_trial_is_failed_and_run_again(tmp_path):
    path, runs = write_space(tmp_path), tmp_path / "runs"
    space = load_space(path)
    location = locate("tiny", runs_dir=runs)
    study, _ = open_study(location, space, path.read_text())
    # A worker that asked for a trial (the base RNN, enqueued first) and died.
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    trial = study.ask()
    token = studies.worker_token(0) | {"pid": int(gone.stdout), "start": ""}
    trial.set_user_attr(WORKER, token)
    assert studies.worker_alive(token) is False
    assert studies.worker_alive(studies.worker_token(0)) is True
    summary = run_study(path, RunOptions(trials=4, runs_dir=runs, in_process=True))
    assert summary.recovered == [trial.number] and summary.finished
    trials = trials_of(runs, "tiny")
    stale = next(t for t in trials if t.number == trial.number)
    assert stale.state == TrialState.FAIL and "worker process ended" in stale.user_attrs["failure"]
    retry = [t for t in trials if t.user_attrs.get(RETRY_OF) == trial.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].user_attrs[REFERENCE] == "base_rnn"
    assert_exact_and_unique(trials, 4)


def test_a_failing_candidate_is_recorded_and_replaced(tmp_path, monkeypatch):
    path, runs = write_space(tmp_path), tmp_path / "runs"
    real = worker_module.evaluate
    calls = []

    def flaky(mapping, *args, **kwargs):
        calls.append(mapping["name"])
        if len(calls) == 2:  # the first drawn candidate (the base RNN is the first call)
            raise RuntimeError("boom")
        return real(mapping, *args, **kwargs)

    monkeypatch.setattr(worker_module, "evaluate", flaky)
    summary = run_study(path, RunOptions(trials=4, runs_dir=runs, in_process=True))
    assert summary.finished and summary.counts.failed == 1
    assert summary.counts.failed_label == "1 failed"  # an error: replaced, not run again
    trials = trials_of(runs, "tiny")
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed[0].user_attrs["failure"] == "RuntimeError: boom"
    assert_exact_and_unique(trials, 4)


def test_three_failures_in_a_row_stop_a_worker(tmp_path, monkeypatch):
    path, runs = write_space(tmp_path), tmp_path / "runs"

    def broken(*args, **kwargs):
        raise ValueError("always")

    monkeypatch.setattr(worker_module, "evaluate", broken)
    monkeypatch.setattr(worker_module, "attention_baseline", broken)
    summary = run_study(path, RunOptions(trials=4, runs_dir=runs, in_process=True))
    assert not summary.finished and summary.workers[0].returncode == 1
    assert summary.counts.failed == worker_module.MAX_FAILURES_IN_A_ROW


def test_the_state_budget_prunes_candidates_before_training(tmp_path, monkeypatch):
    # tiny: the base RNN holds 512 bytes at decode, attention 1024, grm and ssc more.
    path = write_space(tmp_path, objectives={"max_decode_state_bytes": 600})
    runs = tmp_path / "runs"
    trained = []
    real = worker_module.evaluate

    def spy(mapping, *args, **kwargs):
        trained.append(mapping["aggregation"]["kind"])
        return real(mapping, *args, **kwargs)

    monkeypatch.setattr(worker_module, "evaluate", spy)
    # Candidates over the budget, enqueued so that the sampler's luck cannot skip them
    # (they take the same path as drawn ones: the sampler hands out enqueued points first).
    study, _ = open_study(locate("tiny", runs_dir=runs), load_space(path), path.read_text())
    over = [
        {"aggregation.kind": "grm", "cache.segments.length": 4},
        {"aggregation.kind": "ssc", "cache.segments.length": 8, "aggregation.top_k": 2},
    ]
    for params in over:
        study.enqueue_trial(params=params)
    summary = run_study(path, RunOptions(trials=8, runs_dir=runs, in_process=True))
    assert summary.finished
    trials = trials_of(runs, "tiny")
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert [t.params for t in pruned[:2]] == over  # enqueued after the references
    for trial in pruned:
        assert trial.constraints["decode_state_bytes"] > 0
        assert trial.user_attrs["decode_state_bytes"] > 600
    assert set(trained) <= {"none"}  # only feasible specs were trained
    attention = next(t for t in trials if t.user_attrs.get("reference") == "attention")
    assert attention.state == TrialState.COMPLETE  # references always run, flagged infeasible
    assert attention.constraints["decode_state_bytes"] == 1024 - 600


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_a_surplus_trial_is_given_back(tmp_path):
    # Without a lock (a database other than PostgreSQL) two workers can both take the
    # last slot: the later one, by number, sees the target reached ahead of it.
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    path = write_space(tmp_path)
    location = locate("s", storage=url, runs_dir=tmp_path / "runs")
    study, _ = open_study(location, load_space(path), path.read_text())
    storage = location.open(create=False)
    token = studies.worker_token(0)
    first = studies.claim_trial(study, storage, location, target=1, token=token)
    assert isinstance(first, optuna.Trial)
    assert studies.claim_trial(study, storage, location, target=1, token=token) == studies.WAIT
    racing = study.ask()  # what a racing worker's ask gives
    assert studies.surplus(study, racing, target=1)
    given_back = next(t for t in study.get_trials(deepcopy=False) if t.number == racing.number)
    assert given_back.state == TrialState.FAIL
    assert given_back.user_attrs["failure"].startswith("surplus")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_gpu_latency_without_a_gpu_is_a_clear_error(tmp_path):
    path = write_space(tmp_path, objectives={"cost": "gpu_latency_ms"})
    with pytest.raises(HardwareUnavailable, match="CUDA GPU.*decode_state_bytes"):
        run_study(path, RunOptions(trials=2, runs_dir=tmp_path / "runs", in_process=True))
    assert not (tmp_path / "runs").exists()  # nothing was created
    result = CliRunner().invoke(app, ["search", str(path), "--runs", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "gpu_latency_ms" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_training_on_a_gpu_without_one_is_a_clear_error(tmp_path):
    path = write_space(tmp_path, train={"device": "cuda"})
    with pytest.raises(HardwareUnavailable, match="train.device cuda.*cpu or auto"):
        run_study(path, RunOptions(trials=2, runs_dir=tmp_path / "runs", in_process=True))
    assert not (tmp_path / "runs").exists()  # nothing was created


def test_the_device_is_not_part_of_the_searched_space(tmp_path):
    """A study started on one machine resumes on another: the device where runs train is
    left out of the space the study is checked against; auto trains here on the CPU."""
    on_cpu = load_space(write_space(tmp_path, name="a"))
    anywhere = load_space(write_space(tmp_path, name="a", train={"device": "auto"}))
    assert anywhere.train.device == "auto" and on_cpu.train.device == "cpu"
    assert studies._space_json(anywhere) == studies._space_json(on_cpu)
    if not torch.cuda.is_available():
        assert train_device(anywhere) == torch.device("cpu")
    slower = load_space(write_space(tmp_path, name="a", train={"seeds": 2}))
    assert studies._space_json(slower) != studies._space_json(on_cpu)  # the rest still is


# --- worker processes ------------------------------------------------------------------------


def slow_space(tmp_path: Path, name: str = "par") -> Path:
    """tiny, with enough steps that a trial takes a few seconds: every worker gets some."""
    return write_space(tmp_path, name, train={"steps": 150, "learning_rates": [1.0e-2]})


def check_parallel_run(runs: Path, study: str, target: int, workers: int, storage=None):
    trials = trials_of(runs, study, storage)
    assert_exact_and_unique(trials, target)
    assert not [t for t in trials if t.state == TrialState.FAIL]
    indices = {t.user_attrs[WORKER]["index"] for t in done(trials)}
    pids = {t.user_attrs[WORKER]["pid"] for t in done(trials)}
    assert indices == set(range(workers)), "every worker contributed"
    assert len(pids) == workers and os.getpid() not in pids


@pytest.mark.slow
def test_two_worker_processes_share_a_journal(tmp_path):
    runs = tmp_path / "runs"
    summary = run_study(slow_space(tmp_path), RunOptions(trials=6, workers=2, runs_dir=runs))
    assert summary.finished and [w.returncode for w in summary.workers] == [0, 0]
    check_parallel_run(runs, "par", 6, 2)
    for index in range(2):
        log = (runs / "par" / "logs" / f"worker-{index}.log").read_text()
        assert f"worker {index}: the study has 6 trials" in log


def test_a_terminated_run_stops_its_workers_and_enqueues_their_trials_again(tmp_path):
    # `kill`, `timeout` or a job scheduler sends SIGTERM to `mcgen search run` alone: its
    # workers run in sessions of their own, and must not go on training, orphaned.
    path = write_space(tmp_path, "term", train={"steps": 100_000, "learning_rates": [1.0e-2]})
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "mcgen.cli", "search", "run", str(path)]
    command += ["--trials", "3", "--runs", str(runs)]
    env = {**os.environ, "MCGEN_CACHE": str(tmp_path / "cache")}
    run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    token, waited = None, time.monotonic() + 120
    while token is None and time.monotonic() < waited and run.poll() is None:
        time.sleep(0.5)
        if (runs / "term" / "journal.log").is_file():
            running = [t for t in trials_of(runs, "term") if WORKER in t.user_attrs]
            token = running[0].user_attrs[WORKER] if running else None
    assert token is not None, run.stderr.read().decode() if run.poll() is not None else ""
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) == 128 + signal.SIGTERM  # as a shell reports a kill
    assert "interrupted: rerun the same command" in run.stderr.read().decode()
    assert studies.worker_alive(token) is False  # stopped, not orphaned
    trials = trials_of(runs, "term")
    (failed,) = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.user_attrs.get(RETRY_OF) for t in trials].count(failed.number) == 1


def test_an_interrupt_just_after_a_claim_gives_the_trial_back(tmp_path, monkeypatch):
    # SIGTERM may land between the claim (the trial runs, with the worker's token) and
    # its scoring: the trial must be failed and enqueued again, not left running.
    path, runs = write_space(tmp_path), tmp_path / "runs"
    location = locate("tiny", runs_dir=runs)
    open_study(location, load_space(path), path.read_text())
    real = studies.claim_trial

    def claim_then_interrupt(*args, **kwargs):
        assert isinstance(real(*args, **kwargs), optuna.Trial)
        raise worker_module.SignalInterrupt(signal.SIGTERM)

    monkeypatch.setattr(studies, "claim_trial", claim_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_worker(location, target=4, index=0)
    trials = trials_of(runs, "tiny")
    (failed,) = [t for t in trials if t.state == TrialState.FAIL]
    assert failed.user_attrs["failure"] == "interrupted; enqueued again"
    (retry,) = [t for t in trials if t.user_attrs.get(RETRY_OF) == failed.number]
    assert retry.state == TrialState.WAITING
    assert not [t for t in trials if t.state == TrialState.RUNNING]


POSTGRES = os.environ.get("MCGEN_TEST_POSTGRES_URL")


@pytest.mark.slow
@pytest.mark.skipif(
    not POSTGRES,
    reason="MCGEN_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL server and sets it)",
)
def test_two_worker_processes_share_a_postgres_study(tmp_path):
    runs, study = tmp_path / "runs", f"pg_{uuid.uuid4().hex[:12]}"
    summary = run_study(
        slow_space(tmp_path),
        RunOptions(study=study, trials=6, workers=2, storage=POSTGRES, runs_dir=runs),
    )
    assert summary.finished and [w.returncode for w in summary.workers] == [0, 0]
    storage = locate(study, storage=POSTGRES).open(create=False)
    assert isinstance(storage, PatientStorage) and isinstance(storage.rdb, RDBStorage)
    check_parallel_run(runs, study, 6, 2, storage=POSTGRES)
    # The report reads the study from the database too.
    from mcgen.search.report import report_study

    report = report_study(study, storage=POSTGRES, runs_dir=runs)
    assert report.pareto and Path(report.files["png"]).is_file()


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_requested_count(tmp_path):
    """Kill a worker in the middle of a trial: the run ends short; the same command
    again fails the orphaned trial, runs it again and reaches the count."""
    path, runs = write_space(tmp_path, "killed"), tmp_path / "runs"
    hub = Hub()
    try:
        hub.start(["search", str(path), "--trials", "4", "--runs", str(runs)])
        held = hub.until(lambda message: message.kind == "training")[-1]
        # The worker is held before training its first trial: that trial is running.
        (victim,) = [t for t in trials_of(runs, "killed") if t.state == TrialState.RUNNING]
        assert victim.user_attrs[WORKER]["pid"] == held.pid
        os.kill(held.pid, signal.SIGKILL)
        output = hub.let_run()
    finally:
        hub.close()
    assert hub.process is not None and hub.process.returncode == 1, output  # ended short
    assert "exited with -9" in output
    left = next(t for t in trials_of(runs, "killed") if t.number == victim.number)
    assert left.state == TrialState.RUNNING  # nobody was left to notice

    result = CliRunner().invoke(app, ["search", str(path), "--trials", "4", "--runs", str(runs)])
    assert result.exit_code == 0, result.output
    assert f"trials {victim.number} were left running" in result.output
    trials = trials_of(runs, "killed")
    assert_exact_and_unique(trials, 4)
    retried = [t for t in trials if t.user_attrs.get(RETRY_OF) == victim.number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == victim.params


def test_run_worker_stops_at_its_deadline(tmp_path):
    path, runs = write_space(tmp_path), tmp_path / "runs"
    location = locate("tiny", runs_dir=runs)
    open_study(location, load_space(path), path.read_text())
    result = run_worker(location, target=5, deadline=time.time() - 1)
    assert result.reason == "deadline" and result.ran == 0 and result.exit_code == 0
