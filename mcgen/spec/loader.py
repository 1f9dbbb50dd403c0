"""Read a spec file: YAML with positions, then schema, then cross-field rules.

Every problem is reported as `file:line:col: dotted.path: message`, all of them at
once, and loading raises `SpecError` before anything is built or written.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mcgen.spec.rules import check_rules, resolve
from mcgen.spec.schema import Spec

Path_ = tuple[str | int, ...]

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MAX_SHOWN = 80  # characters of an offending value quoted back in a message


@dataclass(frozen=True)
class SpecProblem:
    file: str
    line: int  # 1-based
    col: int  # 1-based
    path: str  # dotted, "" for the document itself
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}:{self.col}: {where}{self.message}"


class SpecError(Exception):
    def __init__(self, problems: list[SpecProblem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class LoadedSpec:
    spec: Spec  # resolved: every default filled in
    source: str  # the file it came from, as given

    @property
    def spec_hash(self) -> str:
        return spec_hash(self.spec)


def spec_hash(spec: Spec) -> str:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def load_spec(path: str | Path) -> LoadedSpec:
    path = Path(path)
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([SpecProblem(name, 1, 1, "", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([SpecProblem(name, 1, 1, "", f"cannot read: {exc}")]) from None
    return LoadedSpec(parse_spec(text, name), name)


def parse_spec(text: str, file: str = "<spec>") -> Spec:
    root = _compose(text, file)
    if not isinstance(root, yaml.MappingNode) or root.tag != _MAP_TAG:
        raise SpecError([_at(root, file, "", "a spec is a mapping of fields (name, memory, ...)")])
    problems: list[SpecProblem] = []
    unreadable: set[Path_] = set()
    data = _construct(root, (), file, problems, unreadable)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        problems += [
            _pydantic_problem(root, file, err)
            for err in exc.errors()
            # A value that could not be read is reported once, by `_construct`.
            if not any(tuple(err["loc"][:n]) in unreadable for n in range(len(err["loc"]) + 1))
        ]
        raise SpecError(_in_order(problems)) from None
    if problems:
        raise SpecError(_in_order(problems))
    violations = check_rules(spec)
    if violations:
        raise SpecError(
            _in_order([_problem_at_path(root, file, v.path, v.message) for v in violations])
        )
    return resolve(spec)


class _Unsupported(yaml.MarkedYAMLError):
    """Valid YAML that a spec may not use (aliases)."""


class _SpecLoader(yaml.SafeLoader):
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


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _compose(text: str, file: str) -> yaml.Node:
    loader = _SpecLoader(text)
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


def _construct(
    node: yaml.Node, path: Path_, file: str, problems: list[SpecProblem], unreadable: set[Path_]
) -> Any:
    """Build plain python data from the node tree, reporting duplicate keys and odd values.

    Keys are taken as written (`on:` is the key "on", not the YAML 1.1 boolean), and
    of duplicated keys the last wins, as in PyYAML.
    """
    if isinstance(node, yaml.MappingNode) and node.tag == _MAP_TAG:
        out: dict[str, Any] = {}
        seen: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(
                    _at(
                        key_node,
                        file,
                        _dotted(path),
                        "a key must be a field name, not a collection",
                    )
                )
                continue
            key = str(key_node.value)
            here = (*path, key)
            if key in seen:
                first = seen[key].start_mark.line + 1
                problems.append(
                    _at(
                        key_node,
                        file,
                        _dotted(here),
                        f"duplicate key (first given on line {first})",
                    )
                )
            seen[key] = key_node
            out[key] = _construct(value_node, here, file, problems, unreadable)
        return out
    if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ_TAG:
        return [
            _construct(item, (*path, i), file, problems, unreadable)
            for i, item in enumerate(node.value)
        ]
    if isinstance(node, yaml.ScalarNode):
        try:
            return yaml.constructor.SafeConstructor().construct_object(node)
        except Exception as exc:  # untrusted input: any failure to build a value is a problem
            if node.tag.startswith("tag:yaml.org,2002:python/") or node.tag.startswith("!"):
                message = f"unsupported YAML tag {_short_tag(node.tag)}"
            else:
                reason = getattr(exc, "problem", None) or str(exc)
                message = f"cannot read this value as {_short_tag(node.tag)} ({reason})"
    else:
        message = f"unsupported YAML tag {_short_tag(node.tag)}"
    problems.append(_at(node, file, _dotted(path), message))
    unreadable.add(path)
    return None


def _short_tag(tag: str) -> str:
    return (
        "!!" + tag.removeprefix("tag:yaml.org,2002:")
        if tag.startswith("tag:yaml.org,2002:")
        else tag
    )


def _in_order(problems: list[SpecProblem]) -> list[SpecProblem]:
    return sorted(problems, key=lambda p: (p.line, p.col))


def _pydantic_problem(root: yaml.Node, file: str, err: dict[str, Any]) -> SpecProblem:
    loc = tuple(err["loc"])
    message = err["msg"]
    if err["type"] == "missing":
        message = "required field is missing"
    elif err["type"] == "extra_forbidden":
        message = "unknown field"
        allowed = _allowed_fields(loc[:-1])
        if allowed:
            message += f" (allowed here: {', '.join(allowed)})"
    elif err["type"] in ("model_type", "dict_type"):
        message = f"must be a mapping of fields, got {_shown(err['input'])}"
    elif err["type"] == "value_error":
        message = str(err["ctx"]["error"]) if "ctx" in err else message
    elif "input" in err:
        message += f", got {_shown(err['input'])}"
    return _problem_at_path(root, file, loc, message, point_at_key=err["type"] == "extra_forbidden")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _allowed_fields(parent: Path_) -> list[str]:
    model: Any = Spec
    for part in parent:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        model = field.annotation
        if not (isinstance(model, type) and hasattr(model, "model_fields")):
            return []
    return list(model.model_fields)


def _problem_at_path(
    root: yaml.Node, file: str, path: Path_, message: str, *, point_at_key: bool = False
) -> SpecProblem:
    """Point at the node for `path`; an absent field at the key of its parent section.

    A wrong scalar value is shown at the value; an unknown key, or a whole section,
    at its key.
    """
    dotted = _dotted(path)
    node, key = root, None
    for part in path:
        entry = _child(node, part)
        if entry is None:
            return _at(key or node, file, dotted, message)
        key, node = entry
    if key is not None and (point_at_key or not isinstance(node, yaml.ScalarNode)):
        node = key
    return _at(node, file, dotted, message)


def _child(node: yaml.Node, part: str | int) -> tuple[yaml.Node | None, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        # The last of duplicated keys is the one whose value was used.
        for key_node, value_node in reversed(node.value):
            if isinstance(key_node, yaml.ScalarNode) and str(key_node.value) == str(part):
                return key_node, value_node
    elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return None, node.value[part]
    return None


def _at(node: yaml.Node, file: str, path: str, message: str) -> SpecProblem:
    return SpecProblem(file, node.start_mark.line + 1, node.start_mark.column + 1, path, message)


def _dotted(path: Path_) -> str:
    return ".".join(str(p) for p in path)
