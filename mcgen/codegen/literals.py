"""Python literals for generated source, made only from validated values.

A spec is untrusted input. Its values reach generated code only through this
module, which accepts numbers, booleans, None, identifier-like strings (names and
enum choices) and containers of those, and refuses anything else.

The text is what `ruff format` writes for the value: double quotes, and containers that
would not fit on their line spread one item a line with a trailing comma (which keeps
them spread however the formatter is run).
"""

from __future__ import annotations

import math
import re

_SAFE_STRING = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A list or tuple goes on one line when it ends by this column (its indent plus its text):
# room for what precedes it on the line, a dict key or `NAME = `, within 100 columns.
_INLINE_COLUMNS = 70


class UnsafeLiteral(ValueError):
    pass


def py_literal(value: object, indent: int = 0) -> str:
    """Source text of `value`, its lines after the first indented by `indent` (the column
    of the line it starts on); dicts and long lists or tuples spread over lines."""
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
        return f'"{value}"'  # an identifier: nothing to escape
    if isinstance(value, (list, tuple)):
        return _sequence_literal(value, indent)
    if isinstance(value, dict):
        if not value:
            return "{}"
        pad = " " * (indent + 4)
        lines = [
            f"{pad}{py_literal(str(k))}: {py_literal(v, indent + 4)}," for k, v in value.items()
        ]
        return "{\n" + "\n".join(lines) + "\n" + " " * indent + "}"
    raise UnsafeLiteral(f"cannot write a {type(value).__name__} into generated code")


def _sequence_literal(value: list | tuple, indent: int) -> str:
    opening, closing = ("(", ")") if isinstance(value, tuple) else ("[", "]")
    items = [py_literal(v, indent + 4) for v in value]
    inline = ", ".join(items) + ("," if len(items) == 1 and opening == "(" else "")
    if indent + len(inline) + 2 <= _INLINE_COLUMNS and "\n" not in inline:
        return opening + inline + closing
    pad = " " * (indent + 4)
    return opening + "\n" + "".join(f"{pad}{item},\n" for item in items) + " " * indent + closing
