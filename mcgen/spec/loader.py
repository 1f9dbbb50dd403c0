"""Read a spec file: YAML with positions, then schema, then cross-field rules.

Every problem is reported as `file:line:col: dotted.path: message`, all of them at
once, and loading raises `SpecError` before anything is built or written.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mcgen.spec.positioned_yaml import (
    MAP_TAG,
    Path_,
    at,
    compose,
    construct,
    in_order,
    problem_at_path,
)
from mcgen.spec.problems import SpecError, SpecProblem, unreadable_file
from mcgen.spec.rules import check_rules, resolve
from mcgen.spec.schema import Spec

__all__ = ["LoadedSpec", "SpecError", "SpecProblem", "load_spec", "parse_spec", "spec_hash"]

_MAX_SHOWN = 80  # characters of an offending value quoted back in a message


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
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([unreadable_file(name, exc)]) from None
    return LoadedSpec(parse_spec(text, name), name)


def parse_spec(text: str, file: str = "<spec>") -> Spec:
    root = compose(text, file)
    if not isinstance(root, yaml.MappingNode) or root.tag != MAP_TAG:
        raise SpecError([at(root, file, "", "a spec is a mapping of fields (name, memory, ...)")])
    problems: list[SpecProblem] = []
    unreadable: set[Path_] = set()
    data = construct(root, (), file, problems, unreadable)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        problems += [
            _pydantic_problem(root, file, err)
            for err in exc.errors()
            # A value that could not be read is reported once, by `construct`.
            if not any(tuple(err["loc"][:n]) in unreadable for n in range(len(err["loc"]) + 1))
        ]
        raise SpecError(in_order(problems)) from None
    if problems:
        raise SpecError(in_order(problems))
    violations = check_rules(spec)
    if violations:
        raise SpecError(
            in_order([problem_at_path(root, file, v.path, v.message) for v in violations])
        )
    return resolve(spec)


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
    return problem_at_path(root, file, loc, message, point_at_key=err["type"] == "extra_forbidden")


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
