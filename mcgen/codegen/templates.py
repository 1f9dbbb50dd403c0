"""The Jinja environment that renders templates/ (strict: an undefined name is an error)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import jinja2

from mcgen.codegen.header import header_comment
from mcgen.codegen.literals import py_literal


def template_root() -> Path:
    """templates/ of a source checkout, or the copy that wheels carry inside the package."""
    package_dir = Path(__file__).resolve().parent.parent
    for candidate in (package_dir / "_templates", package_dir.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"mcgen's templates are missing (looked beside {package_dir})")


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_root())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["pyrepr"] = py_literal
    env.filters["tuple"] = tuple
    env.filters["arguments"] = arguments
    env.globals["header_comment"] = header_comment
    return env


def arguments(names, suffix: str = "") -> str:
    """Optional arguments after fixed ones: ["u", "g"] -> ", u, g" (", u_t, g_t" with "_t")."""
    return "".join(f", {name}{suffix}" for name in names)
