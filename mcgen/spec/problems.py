"""The problems found in a spec (or a search space) and the error that carries them."""

from __future__ import annotations

from dataclasses import dataclass


def printable(text: str) -> str:
    """text with every non-printable character (control codes, terminal escapes, bidi
    overrides) written as its python escape, so a message cannot drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


@dataclass(frozen=True)
class SpecProblem:
    file: str
    line: int  # 1-based
    col: int  # 1-based
    path: str  # dotted, "" for the document itself
    message: str

    def __str__(self) -> str:
        # Paths and messages quote the spec's own text (keys, values): escape it.
        where = f"{self.path}: " if self.path else ""
        return printable(f"{self.file}:{self.line}:{self.col}: {where}{self.message}")


class SpecError(Exception):
    def __init__(self, problems: list[SpecProblem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
