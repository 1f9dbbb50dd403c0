"""A study's journal file (runs/<study>/journal.log) survives a torn last record (a crash
mid-write, a full disk): the next write cuts it back to the last whole record, keeps a
copy and says so; a journal emptied or damaged inside is a clear error, never a fresh
start or a raw JSONDecodeError."""

from __future__ import annotations

import errno
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

from mcgen.cli import app
from mcgen.search import journal as journals
from mcgen.search import study as studies
from mcgen.search.report import report_study
from mcgen.search.space import load_space
from mcgen.search.study import SearchError, locate, open_study
from mcgen.search.trials import REFERENCE

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "search" / "tiny.yaml"
TORN = b'{"op_code":6,"worker_id":"4f2a-0","trial_id":3,"user_att'  # a write cut short


@pytest.fixture(autouse=True)
def quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def space_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.read_text(encoding="utf-8"), encoding="utf-8")
    return path


def opened(space_file: Path, runs: Path, *, target: int | None = None) -> optuna.Study:
    """open_study as `mcgen search` runs it (create, or resume)."""
    space = load_space(space_file)
    study, _ = open_study(
        locate("tiny", runs_dir=runs), space, space_file.read_text(encoding="utf-8"), target=target
    )
    return study


def journal_of(runs: Path) -> Path:
    return runs / "tiny" / studies.JOURNAL


def copies_of(journal: Path) -> list[Path]:
    return sorted(journal.parent.glob(f"{journal.name}.torn-*"))


def reference_kinds(runs: Path) -> list[str]:
    study, _, _ = studies.load_study(locate("tiny", runs_dir=runs))
    return sorted(t.user_attrs[REFERENCE] for t in study.get_trials(deepcopy=False))


def test_resume_cuts_a_torn_last_record_keeps_a_copy_and_says_so(space_file, tmp_path, capsys):
    runs = tmp_path / "runs"
    opened(space_file, runs)
    journal = journal_of(runs)
    whole = journal.read_bytes()
    journal.write_bytes(whole + TORN)

    # Twice: the first resume's records would be glued to the torn line, and the
    # second would then meet a line that is not JSON.
    opened(space_file, runs, target=3)
    opened(space_file, runs, target=4)

    text = journal.read_bytes()
    assert text.startswith(whole) and TORN not in text and text.endswith(b"\n")
    (copy,) = copies_of(journal)
    assert copy.read_bytes() == whole + TORN
    said = capsys.readouterr().err
    assert said.count("\n") == 1, said  # one line, once
    assert f"{journal}: its last record was cut short ({len(TORN)} bytes" in said
    assert f"kept in {copy}" in said
    assert reference_kinds(runs) == ["attention", "base_rnn"]  # nothing lost
    study, _, _ = studies.load_study(locate("tiny", runs_dir=runs))
    assert study.user_attrs["target"] == 4


def test_a_worker_cuts_a_torn_record_before_its_next_write(space_file, tmp_path, capsys):
    # Another process's write was cut short while this one has the study open.
    runs = tmp_path / "runs"
    opened(space_file, runs)
    study, _, _ = studies.load_study(locate("tiny", runs_dir=runs))
    journal = journal_of(runs)
    whole = journal.read_bytes()
    journal.write_bytes(whole + TORN)
    trial = study.ask()
    trial.set_user_attr("note", "written after the torn record")
    study.tell(trial, state=TrialState.FAIL)

    assert TORN not in journal.read_bytes()
    assert copies_of(journal)[0].read_bytes() == whole + TORN
    assert "its last record was cut short" in capsys.readouterr().err
    again, _, _ = studies.load_study(locate("tiny", runs_dir=runs))
    failed = again.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    assert [t.user_attrs["note"] for t in failed] == ["written after the torn record"]


def test_a_journal_whose_only_record_is_torn_starts_afresh(space_file, tmp_path, capsys):
    runs = tmp_path / "runs"
    journal = journal_of(runs)
    journal.parent.mkdir(parents=True)
    journal.write_bytes(TORN)  # the study's creation was cut short: nothing was recorded
    opened(space_file, runs)
    assert reference_kinds(runs) == ["attention", "base_rnn"]
    assert copies_of(journal)[0].read_bytes() == TORN
    assert "no whole record was left" in capsys.readouterr().err


def test_the_report_reads_past_a_torn_record_and_says_so(space_file, tmp_path):
    runs = tmp_path / "runs"
    opened(space_file, runs)
    journal = journal_of(runs)
    journal.write_bytes(journal.read_bytes() + TORN)
    report = report_study("tiny", runs_dir=runs)
    assert any("cut short" in note and "mcgen search" in note for note in report.notes)
    assert journal.read_bytes().endswith(TORN)  # a report only reads
    assert not copies_of(journal)


def test_an_emptied_journal_is_an_error_not_a_fresh_start(space_file, tmp_path):
    runs = tmp_path / "runs"
    opened(space_file, runs)
    journal = journal_of(runs)
    journal.write_bytes(b"")
    with pytest.raises(SearchError, match=f"{journal} is empty"):
        opened(space_file, runs)
    with pytest.raises(SearchError, match="is empty"):
        studies.load_study(locate("tiny", runs_dir=runs))
    assert journal.read_bytes() == b""  # nothing was started in it
    result = CliRunner().invoke(app, ["search", str(space_file), "--runs", str(runs)])
    assert result.exit_code == 2, result.output
    assert "is empty" in result.output and "Traceback" not in result.output


def damage_inside(journal: Path) -> int:
    """What an earlier resume made of a torn record: the torn line glued to the next
    record, more records after it. Returns the damaged line's number (from 1)."""
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:-1]) + TORN + lines[-1] + lines[-1])
    return len(lines)


def test_a_journal_damaged_inside_is_a_clear_error(space_file, tmp_path):
    runs = tmp_path / "runs"
    opened(space_file, runs)
    journal = journal_of(runs)
    line = damage_inside(journal)
    damaged = journal.read_bytes()
    with pytest.raises(SearchError, match=f"{journal}: line {line} is not a whole record"):
        studies.load_study(locate("tiny", runs_dir=runs))
    runner = CliRunner()
    for args in (["search", "report", "tiny"], ["search", str(space_file)]):
        result = runner.invoke(app, [*args, "--runs", str(runs)])
        assert result.exit_code == 2, result.output
        assert f"line {line} is not a whole record" in result.output
        assert "JSONDecodeError" not in result.output and "Traceback" not in result.output
    assert journal.read_bytes() == damaged  # left as it was, for the user to decide


def test_an_unreadable_journal_is_a_clear_error(space_file, tmp_path):
    runs = tmp_path / "runs"
    opened(space_file, runs)
    journal = journal_of(runs)
    journal.write_bytes(yaml.safe_dump({"not": "a journal"}).encode() * 3)
    with pytest.raises(SearchError, match=f"{journal}: line 1 is not a whole record"):
        opened(space_file, runs)


def test_a_write_that_fails_is_a_clear_error(space_file, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    opened(space_file, runs)
    study, _, _ = studies.load_study(locate("tiny", runs_dir=runs))

    def full(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journals.os, "fsync", full)
    with pytest.raises(SearchError, match="could not be written .No space left on device."):
        study.set_user_attr("note", "lost")
