"""YAML with positions: read untrusted text into nodes, build plain data from them while
reporting odd values, and point at the node of a dotted path.

Specs and search spaces share it, so both report problems as `file:line:col: path: message`.
"""

from __future__ import annotations

import re
import weakref
from typing import Any

import yaml

from mcgen.spec.problems import SpecError, SpecProblem

Path_ = tuple[str | int, ...]

MAP_TAG = "tag:yaml.org,2002:map"
SEQ_TAG = "tag:yaml.org,2002:seq"
INT_TAG = "tag:yaml.org,2002:int"
FLOAT_TAG = "tag:yaml.org,2002:float"
BOOL_TAG = "tag:yaml.org,2002:bool"
_OCTAL = re.compile(r"[-+]?0[0-7_]+")


class _Unsupported(yaml.MarkedYAMLError):
    """Valid YAML that a spec may not use (aliases)."""


class _SafeNodeLoader(yaml.SafeLoader):
    """SafeLoader without aliases, reading `1e-3` as a float.

    Aliases are refused: a spec is small and untrusted, and aliases allow both
    recursive documents and exponential expansion ("billion laughs").
    PyYAML follows YAML 1.1, where a float needs a dot (`1e-3` would be the string
    "1e-3"); the resolver added below accepts the YAML 1.2 spelling too.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Unsupported(
                problem="aliases (*name) are not supported in a spec; write the value out",
                problem_mark=event.start_mark,
            )
        return super().compose_node(parent, index)


_SafeNodeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def compose(text: str, file: str) -> yaml.Node:
    try:
        # Built inside the try: the reader refuses control characters as it is made.
        loader = _SafeNodeLoader(text)
    except yaml.reader.ReaderError as exc:
        raise SpecError([_unreadable_character(text, file, exc)]) from None
    try:
        node = loader.get_single_node()
    except _Unsupported as exc:
        mark = exc.problem_mark
        raise SpecError(
            [SpecProblem(file, mark.line + 1, mark.column + 1, "", exc.problem)]
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise SpecError(
            [SpecProblem(file, line, col, "", f"invalid YAML: {exc.problem}")]
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError([SpecProblem(file, 1, 1, "", f"invalid YAML: {exc}")]) from None
    except RecursionError:
        raise SpecError([SpecProblem(file, 1, 1, "", "invalid YAML: nested too deeply")]) from None
    finally:
        loader.dispose()
    if node is None:
        raise SpecError([SpecProblem(file, 1, 1, "", "the file is empty")])
    return node


def _unreadable_character(text: str, file: str, exc: yaml.reader.ReaderError) -> SpecProblem:
    """Where the character YAML refuses (NUL, ESC, DEL, ...) is, as line and column."""
    position = exc.position
    line = text.count("\n", 0, position) + 1
    col = position - (text.rfind("\n", 0, position) + 1) + 1
    code = exc.character if isinstance(exc.character, int) else ord(exc.character)
    return SpecProblem(
        file,
        line,
        col,
        "",
        f"invalid YAML: control character U+{code:04X} is not allowed in a spec; remove it",
    )


def construct(
    node: yaml.Node, path: Path_, file: str, problems: list[SpecProblem], unreadable: set[Path_]
) -> Any:
    """Build plain python data from the node tree, reporting duplicate keys and odd values.

    Keys are taken as written (`on:` is the key "on", not the YAML 1.1 boolean), and
    of duplicated keys the last wins, as in PyYAML.
    """
    if isinstance(node, yaml.MappingNode) and node.tag == MAP_TAG:
        out: dict[str, Any] = {}
        seen: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(
                    at(
                        key_node,
                        file,
                        dotted(path),
                        "a key must be a field name, not a collection",
                    )
                )
                continue
            key = str(key_node.value)
            here = (*path, key)
            if key in seen:
                first = seen[key].start_mark.line + 1
                problems.append(
                    at(
                        key_node,
                        file,
                        dotted(here),
                        f"duplicate key (first given on line {first})",
                    )
                )
            seen[key] = key_node
            out[key] = construct(value_node, here, file, problems, unreadable)
        return out
    if isinstance(node, yaml.SequenceNode) and node.tag == SEQ_TAG:
        return [
            construct(item, (*path, i), file, problems, unreadable)
            for i, item in enumerate(node.value)
        ]
    if isinstance(node, yaml.ScalarNode):
        try:
            value = yaml.constructor.SafeConstructor().construct_object(node)
        except Exception as exc:  # untrusted input: any failure to build a value is a problem
            if node.tag.startswith("tag:yaml.org,2002:python/") or node.tag.startswith("!"):
                message = f"unsupported YAML tag {_short_tag(node.tag)}"
            else:
                reason = getattr(exc, "problem", None) or str(exc)
                message = f"cannot read this value as {_short_tag(node.tag)} ({reason})"
        else:
            ambiguity = yaml_1_1_only(node, value)
            if ambiguity is None:
                return value
            message = ambiguity
    else:
        message = f"unsupported YAML tag {_short_tag(node.tag)}"
    problems.append(at(node, file, dotted(path), message))
    unreadable.add(path)
    return None


def yaml_1_1_only(node: yaml.ScalarNode, value: Any) -> str | None:
    """Why a plain scalar must not be read as PyYAML (YAML 1.1) reads it, or None.

    YAML 1.1 reads `017` as octal 15, `1:30` as base 60 (90) and `on`/`no` as booleans,
    where YAML 1.2 and most readers see 17, text and text: refuse the forms that differ.
    """
    if node.style is not None:  # quoted or block: text, as written
        return None
    written = node.value
    if node.tag == INT_TAG and _OCTAL.fullmatch(written):
        return (
            f"`{written}` is an octal number in YAML 1.1 (read as {value}): write it without "
            "the leading zero, or quote it for text"
        )
    if node.tag in (INT_TAG, FLOAT_TAG) and ":" in written:
        return (
            f"`{written}` is a base-60 number in YAML 1.1 (read as {value}): write a decimal "
            "number, or quote it for text"
        )
    if node.tag == BOOL_TAG and written.lower() not in ("true", "false"):
        return (
            f"`{written}` is a boolean in YAML 1.1 (read as {str(value).lower()}): write true "
            "or false, or quote it for text"
        )
    return None


def _short_tag(tag: str) -> str:
    return (
        "!!" + tag.removeprefix("tag:yaml.org,2002:")
        if tag.startswith("tag:yaml.org,2002:")
        else tag
    )


def in_order(problems: list[SpecProblem]) -> list[SpecProblem]:
    return sorted(problems, key=lambda p: (p.line, p.col))


def problem_at_path(
    root: yaml.Node, file: str, path: Path_, message: str, *, point_at_key: bool = False
) -> SpecProblem:
    """Point at the node for `path`; an absent field at the key of its parent section.

    A wrong scalar value is shown at the value; an unknown key, or a whole section,
    at its key.
    """
    where = dotted(path)
    node, key = root, None
    for part in path:
        entry = _child(node, part)
        if entry is None:
            return at(key or node, file, where, message)
        key, node = entry
    if key is not None and (point_at_key or not isinstance(node, yaml.ScalarNode)):
        node = key
    return at(node, file, where, message)


def _child(node: yaml.Node, part: str | int) -> tuple[yaml.Node | None, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        return _keys(node).get(str(part))
    elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return None, node.value[part]
    return None


# Each mapping's keys, indexed once: a file with many problems is reported in linear time.
_KEY_INDEX: weakref.WeakKeyDictionary[yaml.MappingNode, dict[str, tuple[yaml.Node, yaml.Node]]]
_KEY_INDEX = weakref.WeakKeyDictionary()


def _keys(node: yaml.MappingNode) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """key -> (key node, value node); of duplicated keys the last, whose value was used."""
    index = _KEY_INDEX.get(node)
    if index is None:
        index = {
            str(key_node.value): (key_node, value_node)
            for key_node, value_node in node.value
            if isinstance(key_node, yaml.ScalarNode)
        }
        _KEY_INDEX[node] = index
    return index


def at(node: yaml.Node, file: str, path: str, message: str) -> SpecProblem:
    return SpecProblem(file, node.start_mark.line + 1, node.start_mark.column + 1, path, message)


def dotted(path: Path_) -> str:
    return ".".join(str(p) for p in path)
