"""The docs a newcomer reads are whole: every page they point to is in the repository, they
say things rather than cite tracker numbers a reader cannot see, and the license is shipped."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Where users and contributors read prose: the docs, and the comments and docstrings of the code.
READ_BY_USERS = ["README.md", "docs/**/*.md", "search/README.md", "search/*.yaml", "specs/*.yaml"]
READ_IN_CODE = ["mcgen/**/*.py", "templates/**/*.jinja", "benchmarks/*.py", "benchmarks/*.sh"]

DOCS_PATH = re.compile(r"(?<![\w/])docs/[\w./-]*\w")  # docs/design.md, docs/benchmarks/gpu.md
MARKDOWN_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")  # [text](target#anchor)
TRACKER_CITATION = re.compile(r"\bissues?\s*#?\s*\d+|\bof the issue\b", re.IGNORECASE)

# sha256 of the Apache License 2.0 as apache.org publishes it (LICENSE-2.0.txt).
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def files(patterns: list[str]) -> list[Path]:
    found = {path for pattern in patterns for path in REPO.glob(pattern) if path.is_file()}
    return sorted(found)


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def missing_docs_paths(path: Path) -> list[str]:
    """`docs/...` paths named in a file that do not exist (from the repository root)."""
    text = path.read_text(encoding="utf-8")
    where = path.relative_to(REPO)
    return [
        f"{where}:{line_of(text, m.start())}: {m.group()}"
        for m in DOCS_PATH.finditer(text)
        if not (REPO / m.group()).exists()
    ]


def broken_links(path: Path) -> list[str]:
    """Relative markdown links of a page that point to nothing (from the page's folder)."""
    text = path.read_text(encoding="utf-8")
    where = path.relative_to(REPO)
    return [
        f"{where}:{line_of(text, m.start())}: {m.group(1)}"
        for m in MARKDOWN_LINK.finditer(text)
        if "://" not in m.group(1) and not (path.parent / m.group(1)).exists()
    ]


def tracker_citations(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    where = path.relative_to(REPO)
    return [
        f"{where}:{line_of(text, m.start())}: {m.group()}" for m in TRACKER_CITATION.finditer(text)
    ]


@pytest.mark.parametrize("kind", ["docs paths", "markdown links"])
def test_every_page_the_docs_point_to_exists(kind):
    if kind == "docs paths":
        missing = [m for p in files(READ_BY_USERS + READ_IN_CODE) for m in missing_docs_paths(p)]
    else:
        missing = [m for p in files(READ_BY_USERS) if p.suffix == ".md" for m in broken_links(p)]
    assert not missing, "\n".join(missing)


def test_the_readme_points_to_the_design_and_performance_pages():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "docs/design.md" in readme and "docs/performance.md" in readme


def test_no_doc_cites_a_tracker_number():
    cited = [c for p in files(READ_BY_USERS + READ_IN_CODE) for c in tracker_citations(p)]
    assert not cited, "\n".join(cited)


def test_the_license_pyproject_names_is_shipped_verbatim():
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^license = \{ text = "Apache-2.0" \}$', pyproject, re.MULTILINE)
    license_file = REPO / "LICENSE"
    assert license_file.is_file(), "pyproject.toml says Apache-2.0 but there is no LICENSE"
    assert hashlib.sha256(license_file.read_bytes()).hexdigest() == APACHE_2_SHA256
