"""A search-space file: the fixed part of a spec, the fields to vary (one spec field
each, or named bundles of fields), the objectives, the task (MQAR or the needle probe)
and how each candidate is trained (pydantic, strict).

`load_space` reads one with positions in its errors, as the spec loader does;
`suggest_spec` turns an optuna trial into a full spec mapping that `parse_spec` accepts,
and `grid_points` lists every distinct candidate of a `sampler: grid` space.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from mcgen.components.registry import KINDS
from mcgen.mqar.config import MQARDataConfig, Plateau, Seed
from mcgen.niah.config import NIAHDataConfig
from mcgen.spec import SpecError, SpecProblem, parse_spec
from mcgen.spec.positioned_yaml import compose, construct, in_order, problem_at_path
from mcgen.spec.problems import unreadable_file
from mcgen.spec.schema import Spec, check_package_name

# decode_state_bytes and train_flops_per_token come from the cost model; gpu_latency_ms is
# the generated layer's measured forward time on a CUDA GPU.
CostKey = Literal["decode_state_bytes", "train_flops_per_token", "gpu_latency_ms"]
Choice = Union[str, int, float, bool]  # noqa: UP007 (a runtime union for pydantic)

# Fields set first when a trial builds a spec (those that choose a component): whether the
# others apply depends on them.
_DECIDING = tuple(kind.selector for kind in KINDS)
# Spec fields a search may not set: the search names its candidates itself.
_NOT_SEARCHED = frozenset({"name"})
# Room left in a package name after the space's name: "_" and 10 hex digits.
_MAX_SPACE_NAME = 64 - 11


class SearchSpaceError(SpecError):
    """Problems in a search-space file, each `file:line:col: dotted.path: message`."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class IntRange(_Strict):
    """An integer field drawn from [low, high], every `step`, or log-uniformly."""

    low: int
    high: int
    log: bool = False
    step: Annotated[int, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _check(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and (self.step != 1 or self.low < 1):
            raise ValueError("a log range needs low >= 1 and step 1")
        if (self.high - self.low) % self.step:
            raise ValueError(f"step {self.step} does not divide high - low")
        return self


def _range_or_choices(value: Any) -> str:
    return "range" if isinstance(value, (dict, IntRange)) else "choices"


Choices = Annotated[list[Choice], Field(min_length=1)]
Domain = Annotated[
    Union[Annotated[Choices, Tag("choices")], Annotated[IntRange, Tag("range")]],  # noqa: UP007
    Discriminator(_range_or_choices),
]


class Objectives(_Strict):
    """Accuracy is always maximised; `cost` is minimised. `max_decode_state_bytes` is a
    budget: candidates whose decode state (whole model, test length) is larger are
    infeasible (an Optuna constraint), and are not trained."""

    cost: CostKey = "decode_state_bytes"
    max_decode_state_bytes: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None


LearningRate = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]


def round_lr(value: float) -> float:
    """A learning rate at 4 significant digits: the same rate always has the same name."""
    return float(f"{value:.4g}")


class LrSweep(_Strict):
    """Learning rates from low to high, `points` of them evenly spaced on a log scale. If
    the best (by mean accuracy over seeds) is at an end, one more rate past that end at
    the same ratio is trained, and so on, at most max_widenings times: the best must be
    bracketed by worse rates on both sides (a best still at an end is reported capped)."""

    low: LearningRate
    high: LearningRate
    points: Annotated[int, Field(ge=2, le=16)] = 3
    max_widenings: Annotated[int, Field(ge=0, le=8)] = 2

    @model_validator(mode="after")
    def _check(self) -> LrSweep:
        if self.low >= self.high:
            raise ValueError(f"low {self.low} must be below high {self.high}")
        return self

    @property
    def ratio(self) -> float:
        """Between two neighbouring rates of the sweep."""
        return (self.high / self.low) ** (1 / (self.points - 1))

    def rate(self, index: int) -> float:
        """The rate `index` steps of the ratio above low (negative: below), rounded."""
        return round_lr(self.low * self.ratio**index)

    def rates(self, below: int = 0, above: int = 0) -> list[float]:
        """The sweep's rates, widened by `below` rates under low and `above` over high."""
        return [self.rate(i) for i in range(-below, self.points + above)]


class SearchTrain(_Strict):
    """How each candidate is trained: at each learning rate (a fixed list, or a sweep that
    widens until it brackets the best), `seeds` times (seeds seed, seed + 1, ...), each
    run at most `steps` steps and stopped early once accuracy stopped rising (plateau).
    The score is the best rate's mean accuracy over seeds. With full_budget_at_best, the
    plateau rule only picks the rate: the best rate's runs it stopped go on without it
    to `steps` (a final run), and the score is theirs (MQAR accuracy can sit flat for
    thousands of steps and then rise, so a plateau does not prove a run has learned all
    it would)."""

    learning_rates: Annotated[list[LearningRate], Field(min_length=1)] | None = None
    lr_sweep: LrSweep | None = None
    seeds: Annotated[int, Field(ge=1, le=100)] = 1
    steps: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)] = 64
    layers: Annotated[int, Field(ge=1)] = 2
    warmup: Annotated[int, Field(ge=0)] = 0
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.1
    eval_every: Annotated[int, Field(ge=1)] | None = None
    plateau: Plateau | None = None
    full_budget_at_best: bool = False
    seed: Seed = 0
    # Where each run trains: cpu, cuda (the generated layers then run their Triton kernels
    # where they have them), or auto (cuda when torch sees a GPU). Not part of what is
    # searched: left out of the space a study is checked against, so a study resumes on
    # another machine.
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", exclude=True)

    @model_validator(mode="after")
    def _one_sweep(self) -> SearchTrain:
        if (self.learning_rates is None) == (self.lr_sweep is None):
            raise ValueError("give exactly one of learning_rates (a list) and lr_sweep")
        if self.full_budget_at_best and self.plateau is None:
            raise ValueError(
                "full_budget_at_best trains again the runs a plateau stopped; without a "
                "plateau rule every run already goes to `steps`: give plateau, or drop it"
            )
        return self

    def first_rates(self) -> list[float]:
        """The rates every candidate is trained at before any widening."""
        if self.lr_sweep is not None:
            return self.lr_sweep.rates()
        return sorted({round_lr(lr) for lr in self.learning_rates or []})

    def run_seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]


# A bundle: named choices, each a part of a spec set together (a variant's aggregation
# and segments; a width's d_model and dimensions). A trial draws one choice per bundle.
Bundle = Annotated[dict[str, dict[str, Any]], Field(min_length=1)]
_BUNDLE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class SearchSpace(_Strict):
    name: str
    base: dict[str, Any]
    vary: dict[str, Domain] = {}
    bundles: dict[str, Bundle] = {}
    # tpe: Optuna's TPE draws candidates; grid: every distinct candidate is enqueued once.
    sampler: Literal["tpe", "grid"] = "tpe"
    objectives: Objectives = Objectives()
    mqar: MQARDataConfig | None = None  # the task: exactly one of mqar and niah
    niah: NIAHDataConfig | None = None
    train: SearchTrain

    @property
    def task(self) -> Literal["mqar", "niah"]:
        return "niah" if self.niah is not None else "mqar"

    @property
    def data(self) -> MQARDataConfig | NIAHDataConfig:
        """The task's data config."""
        data = self.niah if self.niah is not None else self.mqar
        assert data is not None  # the rules ask for one
        return data

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> SearchSpace:
        if info.context and info.context.get("defer_rules"):
            return self  # the loader reports each problem at its own line
        problems = space_problems(self)
        if problems:
            raise ValueError("; ".join(f"{'.'.join(map(str, p))}: {m}" for p, m in problems))
        return self


# --- the spec's fields ----------------------------------------------------------------


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (`Deep | None` -> Deep), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            model = _model_of(arg)
            if model is not None:
                return model
    return None


def _field(path: tuple[str, ...]) -> tuple[bool, type[BaseModel] | None]:
    """(whether `path` names a spec field, the model it holds if it is a section)."""
    model: type[BaseModel] | None = Spec
    for part in path:
        if model is None or part not in model.model_fields:
            return False, None
        model = _model_of(model.model_fields[part].annotation)
    return True, model


def spec_leaf_paths() -> list[str]:
    """Every dotted spec field a search may vary (`aggregation.top_k`, ...)."""

    def walk(model: type[BaseModel], prefix: tuple[str, ...]) -> list[str]:
        out = []
        for name, info in model.model_fields.items():
            inner = _model_of(info.annotation)
            here = (*prefix, name)
            out += walk(inner, here) if inner is not None else [".".join(here)]
        return out

    return [p for p in walk(Spec, ()) if p not in _NOT_SEARCHED]


def _base_problems(
    value: Any, path: tuple[str, ...], where: tuple = ("base",)
) -> list[tuple[tuple, str]]:
    """Keys of a part of a spec (base, a bundle's choice) that are no spec field."""
    out: list[tuple[tuple, str]] = []
    for key, item in value.items():
        here = (*path, key)
        known, model = _field(here)
        if not known or here[0] in _NOT_SEARCHED:
            allowed = [k for k in (_field(path)[1] or Spec).model_fields if (*path, k) != ("name",)]
            out.append(
                ((*where, *here), f"unknown spec field (allowed here: {', '.join(allowed)})")
            )
        elif model is not None:
            if isinstance(item, dict):
                out += _base_problems(item, here, where)
            else:
                out.append(((*where, *here), "is a section of the spec: give a mapping"))
    return out


def _bundle_problems(space: SearchSpace) -> list[tuple[tuple, str]]:
    """Bundle names that are no parameter name, choices with unknown fields, and fields
    given in two places (base, vary, another bundle)."""
    out: list[tuple[tuple, str]] = []
    owner = {leaf: "base" for leaf in _leaves(space.base)}
    owner.update({dotted: "vary" for dotted in space.vary})
    for bundle, choices in space.bundles.items():
        if not _BUNDLE_NAME.match(bundle) or bundle in space.vary:
            out.append(
                (("bundles", bundle), "a bundle's name is a lowercase identifier, not a vary field")
            )
        mine: set[str] = set()
        for choice, mapping in choices.items():
            where = ("bundles", bundle, choice)
            problems = _base_problems(mapping, (), where)
            out += problems
            if problems:
                continue
            for leaf in _leaves(mapping):
                if owner.get(leaf) is not None:
                    out.append(((*where, *leaf.split(".")), f"also set in {owner[leaf]}"))
                mine.add(leaf)
        owner.update({leaf: f"bundle {bundle}" for leaf in mine})
    return out


def space_problems(space: SearchSpace) -> list[tuple[tuple, str]]:
    """Rules across fields: (path in the file, message), in file order."""
    out: list[tuple[tuple, str]] = []
    try:
        check_package_name(space.name)
    except ValueError as exc:
        out.append((("name",), str(exc)))
    if len(space.name) > _MAX_SPACE_NAME:
        out.append((("name",), f"at most {_MAX_SPACE_NAME} characters (candidates add a hash)"))
    if (space.mqar is None) == (space.niah is None):
        out.append(((), "give exactly one task: an mqar or a niah section"))
    if not space.vary and not space.bundles:
        out.append((("vary",), "vary at least one field (in vary or bundles)"))
    out += _base_problems(space.base, ())
    out += _bundle_problems(space)
    leaves = set(spec_leaf_paths())
    for dotted in space.vary:
        if dotted not in leaves:
            near = sorted(p for p in leaves if p.rsplit(".", 1)[-1] == dotted.rsplit(".", 1)[-1])
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            out.append((("vary", dotted), f"not a spec field{hint}"))
        elif _get(space.base, dotted) is not _MISSING:
            out.append((("vary", dotted), "is also fixed in base: give it in one place"))
    if not out:
        out += _candidate_problems(space)
    if not out and space.sampler == "grid" and grid_size(space) > _MAX_GRID:
        out.append((("sampler",), f"the grid has {grid_size(space)} points: at most {_MAX_GRID}"))
    return out


# At most this many specs are checked when a space is loaded (pairs of choices).
_MAX_CHECKS = 600
# At most this many combinations in a grid (each is a study's trial).
_MAX_GRID = 10_000


def _values(domain: Any) -> list[tuple[int | None, Any]]:
    """(index in the file or None, value) of the choices a check tries for one field."""
    if isinstance(domain, IntRange):
        values = list(range(domain.low, domain.high + 1, domain.step))
        if len(values) > 8:
            values = sorted({values[0], values[len(values) // 2], values[-1]})
        return [(None, v) for v in values]
    return list(enumerate(domain))


def _spec_problem(mapping: dict, space: SearchSpace) -> str | None:
    """None if `mapping` (unfinished) makes a valid spec, else why not (one line)."""
    try:
        finish_spec(mapping, space, name=f"{space.name}_check")
    except SpecError as exc:
        return "; ".join(f"{p.path}: {p.message}" if p.path else p.message for p in exc.problems)
    return None


def _with(mapping: dict, values: dict[str, Any], space: SearchSpace) -> dict:
    """mapping with each named field (or bundle: its choice's fields) set."""
    out = json.loads(json.dumps(mapping))
    for dotted, value in values.items():
        if dotted in space.bundles:
            _merge(out, space.bundles[dotted][value])
        else:
            _set(out, dotted, value)
    return out


def _candidate_problems(space: SearchSpace) -> list[tuple[tuple, str]]:
    """Whether the specs a trial can draw are valid: every choice of every field with
    the others at their first choice, then every pair of choices of two fields (while
    that stays under _MAX_CHECKS specs). A choice that gives an invalid spec is an error
    at that choice, with the spec's own message (value_dim != key_dim for dla); a pair
    of choices that do (dla, and a segment length its mini-batch does not divide), at
    the later field's choice, naming the other; then, if there are at most _MAX_CHECKS
    combinations, every one of them, so that suggest_spec can only draw valid specs."""
    first = first_choice(space)
    why = _spec_problem(first, space)
    if why is not None:
        return [(("base",), f"with the first choice of every varied field, not a spec: {why}")]

    def where(dotted: str, index: int | None, value: Any) -> tuple:
        if dotted in space.bundles:
            return ("bundles", dotted, value)
        return ("vary", dotted) if index is None else ("vary", dotted, index)

    options = {bundle: list(enumerate(choices)) for bundle, choices in space.bundles.items()}
    options.update({dotted: _values(domain) for dotted, domain in space.vary.items()})
    out: list[tuple[tuple, str]] = []
    bad: set[tuple[str, int | None, Any]] = set()

    def report(dotted: str, index: int | None, value: Any, message: str) -> None:
        if (dotted, index, value) not in bad:
            out.append((where(dotted, index, value), message))
            bad.add((dotted, index, value))

    for dotted, values in options.items():
        for index, value in values:
            why = _spec_problem(_with(first, {dotted: value}, space), space)
            if why is None:
                continue
            # Blame the pair if another field's other choice makes it valid (dla with a
            # segment length its mini-batch does not divide), else the choice alone.
            fix = next(
                (
                    other
                    for other, choices in options.items()
                    if other != dotted
                    for _, alternative in choices[1:]
                    if _spec_problem(
                        _with(first, {dotted: value, other: alternative}, space), space
                    )
                    is None
                ),
                None,
            )
            if fix is None:
                report(dotted, index, value, f"{value!r} gives an invalid spec: {why}")
            else:
                index0, value0 = options[fix][0]
                report(
                    fix,
                    index0,
                    value0,
                    f"{value0!r} with {dotted} {value!r} gives an invalid spec: {why}",
                )
    pairs = list(itertools.combinations(options, 2))
    if sum(len(options[a]) * len(options[b]) for a, b in pairs) > _MAX_CHECKS:
        return out
    for a, b in pairs:
        for (ia, va), (ib, vb) in itertools.product(options[a], options[b]):
            if (a, ia, va) in bad or (b, ib, vb) in bad:
                continue
            why = _spec_problem(_with(first, {a: va, b: vb}, space), space)
            if why is not None:
                report(b, ib, vb, f"{vb!r} with {a} {va!r} gives an invalid spec: {why}")
    if out or math.prod(len(v) for v in options.values()) > _MAX_CHECKS:
        return out
    # Small enough to try every combination (three fields can interact: a varied
    # recurrence, mini-batch and segment length).
    names = list(options)
    for combination in itertools.product(*options.values()):
        values = {name: value for name, (_, value) in zip(names, combination, strict=True)}
        why = _spec_problem(_with(first, values, space), space)
        if why is not None:
            index, value = combination[-1]
            others = ", ".join(f"{n} {v!r}" for n, v in list(values.items())[:-1])
            report(names[-1], index, value, f"{value!r} with {others} gives an invalid spec: {why}")
            break
    return out


# --- loading --------------------------------------------------------------------------


def load_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SearchSpaceError([unreadable_file(str(path), exc)]) from None
    return parse_space(text, str(path))


def parse_space(text: str, file: str = "<space>") -> SearchSpace:
    try:
        root = compose(text, file)
    except SpecError as exc:
        raise SearchSpaceError(exc.problems) from None
    if not isinstance(root, yaml.MappingNode):
        raise SearchSpaceError([SpecProblem(file, 1, 1, "", "a search space is a mapping")])
    problems: list[SpecProblem] = []
    data = construct(root, (), file, problems, set())
    if problems:
        raise SearchSpaceError(in_order(problems))
    try:
        space = SearchSpace.model_validate(data, context={"defer_rules": True})
    except ValidationError as exc:
        raise SearchSpaceError(
            in_order([_pydantic_problem(root, file, err) for err in exc.errors()])
        ) from None
    rules = space_problems(space)
    if rules:
        raise SearchSpaceError(
            in_order([problem_at_path(root, file, p, m, point_at_key=True) for p, m in rules])
        )
    return space


def _pydantic_problem(root: yaml.Node, file: str, err: Any) -> SpecProblem:
    # Drop the discriminator's tags ("choices", "range"): they are not keys of the file.
    loc = list(err["loc"])
    if len(loc) >= 3 and loc[0] == "vary" and loc[2] in ("choices", "range"):
        del loc[2]
    message = err["msg"]
    if err["type"] == "missing":
        message = "required field is missing"
    elif err["type"] == "extra_forbidden":
        message = "unknown field"
    elif err["type"] == "too_short" and loc and loc[0] == "vary":
        message = "give at least one choice" if len(loc) > 1 else "vary at least one field"
    elif err["type"] == "value_error" and "ctx" in err:
        message = str(err["ctx"]["error"])
    return problem_at_path(
        root, file, tuple(loc), message, point_at_key=err["type"] == "extra_forbidden"
    )


# --- candidates -----------------------------------------------------------------------

_MISSING = object()


def _get(mapping: dict, dotted: str) -> Any:
    node: Any = mapping
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _set(mapping: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = mapping
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def _merge(into: dict, part: dict) -> None:
    """Set every leaf of `part` in `into` (a deep update; sections merge)."""
    for key, value in part.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = json.loads(json.dumps(value))


def _drop(mapping: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    node: Any = mapping
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(last, None)


def applies(mapping: dict, dotted: str) -> bool:
    """Whether a spec field means anything given the deciding fields already in `mapping`
    (top_k only with ssc, a segment length only for constant or logarithmic segments...):
    a field some components read applies where the chosen one (or a choice still open) does."""
    for kind in KINDS:
        owners = kind.owners(dotted)
        if owners is not None:
            chosen = _get(mapping, kind.selector)
            return chosen is _MISSING or chosen in owners
    return True


def _order(paths: typing.Iterable[str]) -> list[str]:
    paths = list(paths)
    return [p for p in _DECIDING if p in paths] + [p for p in paths if p not in _DECIDING]


def _leaves(mapping: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in mapping.items():
        here = f"{prefix}{key}"
        out += _leaves(value, here + ".") if isinstance(value, dict) else [here]
    return out


def _drop_empty(mapping: dict) -> None:
    """Remove sections left empty (memory.deep once its fields were dropped), inner first."""
    for key in list(mapping):
        if isinstance(mapping[key], dict):
            _drop_empty(mapping[key])
            if not mapping[key]:
                del mapping[key]


def finish_spec(mapping: dict, space: SearchSpace, *, name: str | None = None) -> dict:
    """Leave out fields that do not apply, name the spec and check it is a real one.

    The name is the space's name and a hash of the rest, so one candidate is one package.
    Raises SpecError if the result is not a valid spec."""
    out = json.loads(json.dumps(mapping))  # a deep copy of plain data
    out.pop("name", None)
    for dotted in _leaves(out):
        if not applies(out, dotted):
            _drop(out, dotted)
    _drop_empty(out)
    if name is None:
        digest = hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()
        name = f"{space.name}_{digest[:10]}"
    out = {"name": name, **out}
    parse_spec(yaml.safe_dump(out, sort_keys=False), f"<{name}>")
    return out


Pick = typing.Callable[[str, Any], Any]  # (parameter name, its domain) -> a value


def _drawn(space: SearchSpace, pick: Pick) -> tuple[dict, dict[str, Any]]:
    """(the spec mapping, the parameters drawn): one choice of every bundle (merged into
    base), then one value of every `vary` field that applies, deciding fields first."""
    mapping = json.loads(json.dumps(space.base))
    params: dict[str, Any] = {}
    for bundle, choices in space.bundles.items():
        params[bundle] = pick(bundle, list(choices))
        _merge(mapping, choices[params[bundle]])
    for dotted in _order(space.vary):
        if applies(mapping, dotted):
            params[dotted] = pick(dotted, space.vary[dotted])
            _set(mapping, dotted, params[dotted])
    return mapping, params


def suggest_spec(trial: Any, space: SearchSpace) -> dict:
    """The spec a trial draws: base plus one choice per bundle and one value per
    applicable `vary` field.

    Deciding fields (aggregation.kind, ...) are drawn first; a field that does not apply
    to them (top_k without ssc) is not drawn at all, so the sampler sees it as absent."""

    def pick(name: str, domain: Any) -> Any:
        if isinstance(domain, IntRange):
            return trial.suggest_int(
                name, domain.low, domain.high, step=domain.step, log=domain.log
            )
        return trial.suggest_categorical(name, list(domain))

    mapping, _ = _drawn(space, pick)
    return finish_spec(mapping, space)


def _all_values(domain: Any) -> list[Any]:
    if isinstance(domain, IntRange):
        return list(range(domain.low, domain.high + 1, domain.step))
    return list(domain)


def grid_size(space: SearchSpace) -> int:
    """Combinations of every choice (distinct candidates may be fewer)."""
    sizes = [len(c) for c in space.bundles.values()]
    sizes += [len(_all_values(d)) for d in space.vary.values()]
    return math.prod(sizes)


def grid_specs(space: SearchSpace) -> list[tuple[dict[str, Any], dict]]:
    """(parameters, finished spec) of every distinct candidate of the space (for a `grid`
    study), in the order of the file's choices: combinations that give the same spec (a
    top_k choice without ssc) are one point, with only the parameters that apply."""
    names = list(space.bundles) + list(space.vary)
    domains = [list(c) for c in space.bundles.values()]
    domains += [_all_values(d) for d in space.vary.values()]
    points: dict[str, tuple[dict[str, Any], dict]] = {}
    for combination in itertools.product(*domains):
        chosen = dict(zip(names, combination, strict=True))
        mapping, params = _drawn(space, lambda name, _domain, chosen=chosen: chosen[name])
        spec = finish_spec(mapping, space)
        points.setdefault(spec["name"], (params, spec))
    return list(points.values())


def grid_points(space: SearchSpace) -> list[dict[str, Any]]:
    """The parameters of every distinct candidate (grid_specs)."""
    return [params for params, _ in grid_specs(space)]


def first_choice(space: SearchSpace, *, d_model: int | None = None) -> dict:
    """base plus the first choice (or the low end) of every bundle and varied field.
    d_model: prefer each bundle's first choice of that width, if one sets a width."""
    mapping = json.loads(json.dumps(space.base))
    for choices in space.bundles.values():
        widths = [_get(c, "layer.d_model") for c in choices.values()]
        chosen = next(iter(choices.values()))
        if d_model in widths:
            chosen = list(choices.values())[widths.index(d_model)]
        _merge(mapping, chosen)
    for dotted in _order(space.vary):
        domain = space.vary[dotted]
        _set(mapping, dotted, domain.low if isinstance(domain, IntRange) else domain[0])
    return mapping


def widths(space: SearchSpace) -> list[int]:
    """Every layer.d_model the space can draw, in the file's order."""
    domain = space.vary.get("layer.d_model")
    if isinstance(domain, list):
        return list(dict.fromkeys(int(w) for w in domain))
    found = [
        int(w)
        for choices in space.bundles.values()
        for choice in choices.values()
        if (w := _get(choice, "layer.d_model")) is not _MISSING
    ]
    return list(dict.fromkeys(found)) or [int(first_choice(space)["layer"]["d_model"])]
