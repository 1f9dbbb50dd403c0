"""The registry: every component, found once, looked up by name.

Each kind's folder (mcgen/components/recurrences/, ...) is searched for modules that
define a `COMPONENT`: a new variant is a new module there, and nothing lists it by hand.
Names are shown to users (in errors and docs) in the order of their modules' names.
Everything else asks the registry: the schema which names a spec may choose, the rules
which fields apply, the passes, cost, plan and codegen what a component does.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from mcgen.components import aggregations, recurrences, segmentations
from mcgen.components.base import (
    AggregationComponent,
    Component,
    RecurrenceComponent,
    SegmentationComponent,
    SpecField,
    in_words,
)

if TYPE_CHECKING:
    from mcgen.spec.schema import Spec

C = TypeVar("C", bound=Component)


class UnknownComponent(ValueError):
    """A name that no registered component of the kind has."""


class Kind(Generic[C]):
    """The components of one kind, by name, and the spec field that chooses one."""

    def __init__(self, what: str, selector: str, modules: Iterable[ModuleType]):
        self.what = what  # "recurrence"
        self.selector = selector  # the dotted spec field naming one: "memory.recurrence"
        # A plain dict, so that a test can register a component with monkeypatch.setitem.
        self.by_name: dict[str, C] = {}
        for module in modules:
            component = module.COMPONENT
            if component.name in self.by_name:
                raise ValueError(f"two {what} components are named {component.name!r}")
            self.by_name[component.name] = component

    def __iter__(self) -> Iterator[C]:
        return iter(self.by_name.values())

    def names(self) -> tuple[str, ...]:
        return tuple(self.by_name)

    def find(self, name: object) -> C | None:
        return self.by_name.get(name) if isinstance(name, str) else None

    def get(self, name: object) -> C:
        found = self.find(name)
        if found is None:
            raise UnknownComponent(
                f"unknown {self.what} {name!r}: one of {in_words(self.names(), 'or')}"
            )
        return found

    def of(self, spec: Spec) -> C:
        """The component a spec chose."""
        value: Any = spec
        for part in self.selector.split("."):
            value = getattr(value, part)
        return self.get(value)

    def fields(self) -> dict[str, tuple[SpecField, tuple[str, ...]]]:
        """Every optional field some component of this kind reads: path -> (the field, the
        names of the components that read it)."""
        out: dict[str, tuple[SpecField, tuple[str, ...]]] = {}
        for component in self:
            for field in component.fields:
                known, owners = out.get(field.path, (field, ()))
                out[field.path] = (known, (*owners, component.name))
        return out

    def owners(self, dotted: str) -> tuple[str, ...] | None:
        """The components that read spec field `dotted`, by its most specific declared
        field at or above it (memory.deep.momentum: titans; memory.deep.depth: every deep
        memory); None when no component of this kind declares it (all of them read it)."""
        fields = self.fields()
        parts = dotted.split(".")
        for end in range(len(parts), 0, -1):
            found = fields.get(".".join(parts[:end]))
            if found is not None:
                return found[1]
        return None


def discover(package: ModuleType) -> list[ModuleType]:
    """The modules of a components package that define a COMPONENT, by module name (the
    others hold what several components share: recurrences/matrix.py, deep.py)."""
    modules = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda info: info.name):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        if hasattr(module, "COMPONENT"):
            modules.append(module)
    return modules


RECURRENCES: Kind[RecurrenceComponent] = Kind(
    "recurrence", "memory.recurrence", discover(recurrences)
)
AGGREGATIONS: Kind[AggregationComponent] = Kind(
    "aggregation", "aggregation.kind", discover(aggregations)
)
SEGMENTATIONS: Kind[SegmentationComponent] = Kind(
    "segmentation", "cache.segments.kind", discover(segmentations)
)
# Every kind, in the order a search draws the fields that choose them.
KINDS: tuple[Kind[Any], ...] = (AGGREGATIONS, SEGMENTATIONS, RECURRENCES)


def rate_input_names() -> tuple[str, ...]:
    """Every per-token input some recurrence may read, in the op signatures' order: by
    recurrence, each in its own order."""
    names: dict[str, None] = {}
    for recurrence in RECURRENCES:
        names.update(dict.fromkeys(recurrence.possible_inputs()))
    return tuple(names)


def uncached_aggregation() -> str:
    """The aggregation that reads no cache: what a pass rewrites a dead cache's to."""
    return _only(AGGREGATIONS, lambda c: not c.reads_cache)


def unsegmented() -> str:
    """The segmentation without boundaries: what a pass rewrites a dead segmentation to."""
    return _only(SEGMENTATIONS, lambda c: not c.has_boundaries)


def _only(kind: Kind[C], holds: Callable[[C], bool]) -> str:
    found = [c.name for c in kind if holds(c)]
    if len(found) != 1:
        raise UnknownComponent(f"expected one such {kind.what}, found {found}")
    return found[0]
