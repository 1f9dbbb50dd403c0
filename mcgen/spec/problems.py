"""The problems found in a spec (or a search space) and the error that carries them."""

from __future__ import annotations

from dataclasses import dataclass


def printable(text: str) -> str:
    """text with every non-printable character (control codes, terminal escapes, bidi
    overrides) written as its python escape, so a message cannot drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def printable_lines(text: str) -> str:
    """printable() line by line: a message of several lines keeps them."""
    return "\n".join(printable(line) for line in text.split("\n"))


@dataclass(frozen=True)
class SpecProblem:
    file: str
    line: int | None  # 1-based; None for a file that could not be read (no position)
    col: int | None  # 1-based
    path: str  # dotted, "" for the document itself
    message: str

    def __str__(self) -> str:
        # Paths and messages quote the spec's own text (keys, values): escape it.
        if self.line is None:
            return printable(f"{self.message}: {self.file}")
        where = f"{self.path}: " if self.path else ""
        return printable(f"{self.file}:{self.line}:{self.col}: {where}{self.message}")


def unreadable_file(file: str, exc: OSError | UnicodeDecodeError) -> SpecProblem:
    """A file that could not be read: "file not found: PATH", with no made-up position."""
    if isinstance(exc, FileNotFoundError):
        return SpecProblem(file, None, None, "", "file not found")
    if isinstance(exc, UnicodeDecodeError):
        return SpecProblem(file, None, None, "", f"not UTF-8 text ({exc.reason})")
    return SpecProblem(file, None, None, "", f"cannot read ({exc.strerror or exc})")


class SpecError(Exception):
    def __init__(self, problems: list[SpecProblem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
