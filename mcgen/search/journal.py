"""A study's journal file, runs/<study>/journal.log: Optuna's JournalFileBackend, kept
whole when a write is cut short.

Optuna appends each batch of records as JSON lines under a lock file. A write cut short
(a crash mid-write, a full disk) leaves a last line without its end of line; Optuna's
reader skips such a line while it is the last one (another process may still be
writing it), so the study still reads, but the next append is glued to it and from
then on the reader stops at a line that is not JSON. Here every append, under the
writers' lock (so no other write is under way), first cuts such a torn tail back to
the last whole record, keeps the journal as it was beside it and says so on stderr.
A journal that is empty, or damaged before its last line, is reported as a SearchError
naming the line: it is never read as a fresh study.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from mcgen.search.errors import SearchError

TORN_COPY = ".torn-"  # journal.log.torn-<time>: the journal as it was before a cut
_BLOCK = 1 << 16


class JournalError(SearchError):
    """A journal that cannot be read as a study: empty, unreadable, or damaged inside."""


@dataclass(frozen=True)
class TornTail:
    """A last record cut short, and what was done about it."""

    journal: Path
    copy: Path  # the journal as it was, torn record included
    torn_bytes: int  # bytes after the last end of line
    kept_bytes: int  # the journal's size once cut (0: no whole record; the file is removed)

    def message(self) -> str:
        what = (
            "no whole record was left: the study starts afresh"
            if self.kept_bytes == 0
            else "cut back to the last whole record"
        )
        return (
            f"{self.journal}: its last record was cut short ({self.torn_bytes} bytes without "
            f"an end of line, as a crash or a full disk leaves it): {what}; the journal as it "
            f"was is kept in {self.copy}"
        )


def torn_bytes(journal: Path) -> int:
    """How many bytes follow the journal's last end of line (0 if none, or no file)."""
    try:
        with open(journal, "rb") as handle:
            end = handle.seek(0, os.SEEK_END)
            position = end
            while position > 0:
                start = max(0, position - _BLOCK)
                handle.seek(start)
                block = handle.read(position - start)
                newline = block.rfind(b"\n")
                if newline >= 0:
                    return end - (start + newline + 1)
                position = start
            return end
    except FileNotFoundError:
        return 0


def _copy_path(journal: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return journal.with_name(f"{journal.name}{TORN_COPY}{stamp}")


def cut_torn_tail(journal: Path) -> TornTail | None:
    """Cut a torn last record (copying the journal first); None if there is none. The
    caller holds the writers' lock: a last line being written is not torn."""
    torn = torn_bytes(journal)
    if torn == 0:
        return None
    size = journal.stat().st_size
    copy = _copy_path(journal)
    shutil.copyfile(journal, copy)
    kept = size - torn
    if kept == 0:
        journal.unlink()  # not even the study's creation was recorded: a new study
    else:
        os.truncate(journal, kept)
    return TornTail(journal, copy, torn, kept)


def say(torn: TornTail) -> None:
    """One line on stderr: the cut is news to whoever runs the study."""
    print(torn.message(), file=sys.stderr, flush=True)


@contextmanager
def writers_lock(journal: Path) -> Iterator[None]:
    """The lock Optuna's writers of this journal take (the same lock file)."""
    lock = JournalFileSymlinkLock(str(journal))
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def repair_torn_tail(journal: Path) -> TornTail | None:
    """Cut a torn last record, under the writers' lock, and say so."""
    if torn_bytes(journal) == 0:  # the common case: no lock needed to see it
        return None
    with writers_lock(journal):
        torn = cut_torn_tail(journal)
    if torn is not None:
        say(torn)
    return torn


def _whole_record(line: bytes) -> bool:
    try:
        record = json.loads(line)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return False
    return isinstance(record, dict) and "op_code" in record


def check_journal(journal: Path) -> None:
    """Raise JournalError if an existing journal is empty, unreadable, or holds a line
    before its last that is not a whole record (its last line may be torn or still
    being written)."""
    try:
        with open(journal, "rb") as handle:
            lines = list(handle)
    except OSError as exc:
        raise JournalError(f"{journal} cannot be read: {exc.strerror or exc}") from None
    if not lines:
        raise JournalError(
            f"{journal} is empty: the study's records are gone (emptied, or a crash as the "
            "study was being created); restore it from a copy, or delete it to start the "
            "study afresh"
        )
    for number, line in enumerate(lines, start=1):
        if not line.endswith(b"\n"):
            break  # the last line, torn: cut at the next write
        if not _whole_record(line):
            follow = len(lines) - number
            raise JournalError(
                f"{journal}: line {number} is not a whole record (a write cut short, then "
                f"written after), with {follow} more after it: the study cannot be read past "
                "it. Keep a copy, then keep only the lines before it "
                f"(head -n {number - 1}) to recover the trials recorded before it"
            )


class SafeJournalBackend(JournalFileBackend):
    """Optuna's journal file that cuts a torn last record before each append (keeping a
    copy, saying so) and reports a damaged journal as a JournalError."""

    def __init__(self, journal: Path) -> None:
        self.journal = journal
        super().__init__(str(journal))

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        try:
            yield from super().read_logs(log_number_from)
        except ValueError:  # Optuna's "Invalid log format.", JSONDecodeError
            check_journal(self.journal)  # says which line
            raise JournalError(f"{self.journal}: a line is not a whole record") from None

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        # Optuna's append, with the torn-tail cut inside the same hold of the lock.
        text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
        with writers_lock(self.journal):
            torn = cut_torn_tail(self.journal)
            try:
                with open(self.journal, "ab") as handle:
                    handle.write(text.encode("utf-8"))
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as exc:  # a full disk: what was written is kept, a torn
                # record is cut at the next write
                raise JournalError(
                    f"{self.journal}: a record could not be written ({exc.strerror or exc}); "
                    "the study keeps what was written before: make room, then rerun the "
                    "same command"
                ) from None
        if torn is not None:
            say(torn)
