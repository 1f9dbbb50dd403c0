"""Python literals for generated source, made only from validated values.

A spec is untrusted input. Its values reach generated code only through this
module, which accepts numbers, booleans, None, identifier-like strings (names and
enum choices) and containers of those, and refuses anything else.
"""

from __future__ import annotations

import math
import re

_SAFE_STRING = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class UnsafeLiteral(ValueError):
    pass


def py_literal(value: object, indent: int = 0) -> str:
    """Source text of `value`; dicts and long containers spread over indented lines."""
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UnsafeLiteral(f"non-finite number {value!r}")
        return repr(value)
    if isinstance(value, str):
        if not _SAFE_STRING.fullmatch(value):
            raise UnsafeLiteral(f"string {value!r} is not an identifier or enum choice")
        return repr(value)
    if isinstance(value, (list, tuple)):
        items = [py_literal(v) for v in value]
        if isinstance(value, tuple):
            return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
        return "[" + ", ".join(items) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        pad = " " * (indent + 4)
        lines = [
            f"{pad}{py_literal(str(k))}: {py_literal(v, indent + 4)}," for k, v in value.items()
        ]
        return "{\n" + "\n".join(lines) + "\n" + " " * indent + "}"
    raise UnsafeLiteral(f"cannot write a {type(value).__name__} into generated code")
