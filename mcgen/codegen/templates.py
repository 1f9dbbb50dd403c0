"""The Jinja environment that renders templates/ (strict: an undefined name is an error)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

import jinja2

from mcgen.codegen.header import header_comment
from mcgen.codegen.literals import py_literal
from mcgen.components.recurrences.matrix import OWN_CODE_PREFIX
from mcgen.components.registry import RECURRENCES


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
        loader=jinja2.ChoiceLoader(
            [
                jinja2.FileSystemLoader(str(template_root())),
                jinja2.FunctionLoader(component_code),
            ]
        ),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["pyrepr"] = py_literal
    env.filters["tuple"] = tuple
    env.filters["arguments"] = arguments
    env.filters["add_prefix"] = lambda name, prefix: prefix + name
    env.filters["add_suffix"] = lambda name, suffix: name + suffix
    env.filters["keyed"] = lambda name, suffix="": f'"{name}": {name}{suffix}'
    env.globals["header_comment"] = header_comment
    return env


def component_code(name: str) -> tuple[str, str, Callable[[], bool]] | None:
    """The source of a recurrence's own code pieces, by template name; None for any other
    name. Looked up again at every load: a test may register a component for a while."""
    if not name.startswith(OWN_CODE_PREFIX):
        return None
    component = RECURRENCES.find(name.removeprefix(OWN_CODE_PREFIX))
    code = getattr(component, "code", None)  # a deep memory has its own templates instead
    if code is None:
        return None
    return code, f"<{type(component).__module__}.code>", lambda: False


def arguments(names, suffix: str = "") -> str:
    """Optional arguments after fixed ones: ["u", "g"] -> ", u, g" (", u_t, g_t" with "_t")."""
    return "".join(f", {name}{suffix}" for name in names)
