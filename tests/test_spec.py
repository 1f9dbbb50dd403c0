"""The spec loader: every example spec loads, and every kind of bad spec is reported
as `file:line:col: dotted.path: message`, all problems at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from spec_helpers import calls_made

from mcgen.components.base import in_words
from mcgen.components.registry import RECURRENCES
from mcgen.spec import SpecError, SpecProblem, load_spec, parse_spec, spec_hash

# The recurrences a spec may name, as pydantic's error lists them (the registry's order).
RECURRENCE_CHOICES = in_words([repr(name) for name in RECURRENCES.names()], "or")

SPECS = Path(__file__).resolve().parents[1] / "specs"
FILE = "s.yaml"

# The line numbers in the expectations below refer to this text (line 1 is `name`).
BASE = """\
name: grm
memory:
  recurrence: linear
  heads: 4
  key_dim: 64
  value_dim: 64
cache:
  segments: {kind: constant, length: 256}
  init: checkpoint
aggregation:
  kind: grm
  connector: separate
  pool: mean
layer:
  d_model: 256
"""


def edit(*pairs: str, text: str = BASE) -> str:
    """Replace each `old` by `new` (pairs given flat); each `old` must occur exactly once."""
    assert len(pairs) % 2 == 0
    for old, new in zip(pairs[::2], pairs[1::2], strict=True):
        assert text.count(old) == 1, f"{old!r} is not unique in the spec"
        text = text.replace(old, new)
    return text


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, FILE)
    assert info.value.problems, "a SpecError must carry its problems"
    return [str(p) for p in info.value.problems]


def only_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def check(text: str, prefix: str, fragment: str) -> None:
    found = only_problem(text)
    assert found.startswith(prefix + ": "), found
    assert fragment in found[len(prefix) :], found


# --------------------------------------------------------------------------- good specs

EXPECTED_SPECS = {
    "none",
    "residual",
    "grm",
    "soup",
    "ssc",
    "grm_decay",
    "grm_delta",
    "grm_gated_delta",
    "grm_log",
    "grm_independent",
    "residual_explicit",
}


def test_every_variant_has_an_example_spec():
    missing = EXPECTED_SPECS - {p.stem for p in SPECS.glob("*.yaml")}
    assert not missing, f"no example spec for {sorted(missing)}"


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.stem)
def test_example_spec_loads(path: Path):
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# "), "an example spec begins with a comment saying what it is"
    loaded = load_spec(path)
    assert loaded.source == str(path)
    assert loaded.spec.name == path.stem
    assert len(loaded.spec_hash) == 64
    assert loaded.spec == parse_spec(text, "other.yaml")  # loading is pure


def test_example_specs_say_what_the_file_names_promise():
    specs = {name: load_spec(SPECS / f"{name}.yaml").spec for name in EXPECTED_SPECS}
    assert specs["none"].aggregation.kind == "none"
    assert specs["none"].cache.segments.kind == "none"
    assert specs["ssc"].aggregation.top_k == 4
    assert specs["grm_decay"].memory.recurrence == "decay"
    assert specs["grm_delta"].memory.recurrence == "delta"
    assert specs["grm_gated_delta"].memory.recurrence == "gated_delta"
    assert specs["grm_log"].cache.segments.kind == "logarithmic"
    assert specs["grm_log"].cache.segments.length == 64
    assert specs["grm_independent"].cache.init == "independent"
    assert specs["residual_explicit"].cache.segments.boundaries == [128, 512, 1024]
    for name, spec in specs.items():
        assert spec.aggregation.kind == name.split("_")[0]
        assert (spec.memory.heads, spec.memory.key_dim, spec.memory.value_dim) == (4, 64, 64)
        assert spec.layer.d_model == 256


def test_base_text_of_these_tests_is_valid():
    spec = parse_spec(BASE, FILE)
    assert spec.name == "grm"
    assert spec.cache.segments.length == 256


# --------------------------------------------------------------------------- bad specs

BAD = [
    # unknown keys
    pytest.param(
        BASE + "colour: red\n",
        "s.yaml:16:1: colour",
        "unknown field (allowed here: name, memory, cache, aggregation, layer, compute)",
        id="unknown-top-level",
    ),
    pytest.param(
        edit("  value_dim: 64\n", "  value_dim: 64\n  vdim: 64\n"),
        "s.yaml:7:3: memory.vdim",
        "unknown field (allowed here: recurrence, heads, key_dim, value_dim, deep)",
        id="unknown-nested",
    ),
    pytest.param(
        edit("length: 256}", "length: 256, size: 3}"),
        "s.yaml:8:43: cache.segments.size",
        "unknown field (allowed here: kind, length, boundaries)",
        id="unknown-in-flow-mapping",
    ),
    # duplicate keys
    pytest.param(
        BASE + "name: other\n",
        "s.yaml:16:1: name",
        "duplicate key (first given on line 1)",
        id="duplicate-top-level",
    ),
    pytest.param(
        edit("  heads: 4\n", "  heads: 4\n  heads: 8\n"),
        "s.yaml:5:3: memory.heads",
        "duplicate key (first given on line 4)",
        id="duplicate-nested",
    ),
    pytest.param(
        edit("length: 256}", "length: 256, length: 128}"),
        "s.yaml:8:43: cache.segments.length",
        "duplicate key (first given on line 8)",
        id="duplicate-in-flow-mapping",
    ),
    # wrong types
    pytest.param(
        edit("heads: 4", 'heads: "4"'),
        "s.yaml:4:10: memory.heads",
        "Input should be a valid integer, got '4'",
        id="string-for-int",
    ),
    pytest.param(
        edit("heads: 4", "heads: 4.0"),
        "s.yaml:4:10: memory.heads",
        "Input should be a valid integer, got 4.0",
        id="float-for-int",
    ),
    pytest.param(
        edit("heads: 4", "heads: true"),
        "s.yaml:4:10: memory.heads",
        "Input should be a valid integer, got True",
        id="bool-for-int",
    ),
    pytest.param(
        edit("recurrence: linear", "recurrence: 1"),
        "s.yaml:3:15: memory.recurrence",
        f"Input should be {RECURRENCE_CHOICES}, got 1",
        id="int-for-string-enum",
    ),
    pytest.param(
        edit("name: grm", "name: 123"),
        "s.yaml:1:7: name",
        "Input should be a valid string, got 123",
        id="int-for-name",
    ),
    pytest.param(
        edit("  pool: mean\n", "  pool: mean\n  gate_scale: true\n"),
        "s.yaml:14:15: aggregation.gate_scale",
        "Input should be a valid number, got True",
        id="bool-for-float",
    ),
    pytest.param(
        edit(
            "memory:\n  recurrence: linear\n  heads: 4\n  key_dim: 64\n  value_dim: 64\n",
            "memory: [linear, 4, 64, 64]\n",
        ),
        "s.yaml:2:1: memory",
        "must be a mapping of fields, got ['linear', 4, 64, 64]",
        id="list-for-mapping",
    ),
    pytest.param(
        edit("  segments: {kind: constant, length: 256}", "  segments:\n  - constant\n  - 256"),
        "s.yaml:8:3: cache.segments",
        "must be a mapping of fields, got ['constant', 256]",
        id="list-for-nested-mapping",
    ),
    pytest.param(
        edit("layer:\n  d_model: 256\n", "layer: 256\n"),
        "s.yaml:14:8: layer",
        "must be a mapping of fields, got 256",
        id="scalar-for-mapping",
    ),
    pytest.param(
        edit("heads: 4", "heads: {n: 4}"),
        "s.yaml:4:3: memory.heads",
        "Input should be a valid integer, got {'n': 4}",
        id="mapping-for-int",
    ),
    pytest.param(
        edit("{kind: constant, length: 256}", "{kind: explicit, boundaries: 128}"),
        "s.yaml:8:42: cache.segments.boundaries",
        "Input should be a valid list, got 128",
        id="int-for-list",
    ),
    pytest.param(
        edit("{kind: constant, length: 256}", "{kind: explicit, boundaries: [128, x]}"),
        "s.yaml:8:48: cache.segments.boundaries.1",
        "Input should be a valid integer, got 'x'",
        id="string-in-int-list",
    ),
    pytest.param(
        edit("heads: 4", "heads: !!int four"),
        "s.yaml:4:10: memory.heads",
        "cannot read this value as !!int",
        id="explicit-tag-that-fails",
    ),
    # values out of range
    pytest.param(
        edit("heads: 4", "heads: 0"),
        "s.yaml:4:10: memory.heads",
        "Input should be greater than or equal to 1, got 0",
        id="heads-zero",
    ),
    pytest.param(
        edit("key_dim: 64", "key_dim: 100000"),
        "s.yaml:5:12: memory.key_dim",
        "Input should be less than or equal to 4096, got 100000",
        id="key-dim-too-large",
    ),
    pytest.param(
        edit("length: 256", "length: -8"),
        "s.yaml:8:38: cache.segments.length",
        "Input should be greater than or equal to 1, got -8",
        id="negative-length",
    ),
    pytest.param(
        edit("{kind: constant, length: 256}", "{kind: explicit, boundaries: [0, 64]}"),
        "s.yaml:8:43: cache.segments.boundaries.0",
        "Input should be greater than or equal to 1, got 0",
        id="boundary-zero",
    ),
    pytest.param(
        edit("  pool: mean\n", "  pool: mean\n  gate_scale: 0\n"),
        "s.yaml:14:15: aggregation.gate_scale",
        "Input should be greater than 0, got 0",
        id="gate-scale-zero",
    ),
    pytest.param(
        edit("  pool: mean\n", "  pool: mean\n  gate_scale: .nan\n"),
        "s.yaml:14:15: aggregation.gate_scale",
        "Input should be a finite number",
        id="gate-scale-nan",
    ),
    pytest.param(
        BASE + "compute:\n  chunk_size: 48\n",
        "s.yaml:17:15: compute.chunk_size",
        "must be a power of two, got 48",
        id="chunk-not-power-of-two",
    ),
    pytest.param(
        BASE + "compute:\n  chunk_size: 8192\n",
        "s.yaml:17:15: compute.chunk_size",
        "Input should be less than or equal to 4096, got 8192",
        id="chunk-too-large",
    ),
    pytest.param(
        BASE + "  decay_normalizer: -1.5\n",
        "s.yaml:16:21: layer.decay_normalizer",
        "Input should be greater than 0, got -1.5",
        id="decay-normalizer-negative",
    ),
    # bad enum values
    pytest.param(
        edit("recurrence: linear", "recurrence: lstm"),
        "s.yaml:3:15: memory.recurrence",
        f"Input should be {RECURRENCE_CHOICES}, got 'lstm'",
        id="enum-recurrence",
    ),
    pytest.param(
        edit("kind: constant", "kind: fixed"),
        "s.yaml:8:20: cache.segments.kind",
        "Input should be 'constant', 'explicit', 'logarithmic' or 'none', got 'fixed'",
        id="enum-segments",
    ),
    pytest.param(
        edit("init: checkpoint", "init: zeros"),
        "s.yaml:9:9: cache.init",
        "Input should be 'checkpoint' or 'independent', got 'zeros'",
        id="enum-init",
    ),
    pytest.param(
        edit("kind: grm", "kind: attention"),
        "s.yaml:11:9: aggregation.kind",
        "Input should be 'grm', 'none', 'residual', 'soup' or 'ssc', got 'attention'",
        id="enum-aggregation",
    ),
    pytest.param(
        edit("connector: separate", "connector: key"),
        "s.yaml:12:14: aggregation.connector",
        "Input should be 'separate' or 'query', got 'key'",
        id="enum-connector",
    ),
    pytest.param(
        edit("pool: mean", "pool: max"),
        "s.yaml:13:9: aggregation.pool",
        "Input should be 'mean' or 'sum', got 'max'",
        id="enum-pool",
    ),
    pytest.param(
        BASE + "  key_norm: l1\n",
        "s.yaml:16:13: layer.key_norm",
        "Input should be 'auto', 'l2' or 'none', got 'l1'",
        id="enum-key-norm",
    ),
    pytest.param(
        edit("kind: grm", "kind: GRM"),
        "s.yaml:11:9: aggregation.kind",
        "got 'GRM'",
        id="enum-is-case-sensitive",
    ),
    # missing required fields
    pytest.param(
        edit("name: grm\n", ""),
        "s.yaml:1:1: name",
        "required field is missing",
        id="missing-name",
    ),
    pytest.param(
        edit("  heads: 4\n", ""),
        "s.yaml:2:1: memory.heads",
        "required field is missing",
        id="missing-nested",
    ),
    pytest.param(
        edit("layer:\n  d_model: 256\n", ""),
        "s.yaml:1:1: layer",
        "required field is missing",
        id="missing-section",
    ),
    pytest.param(
        edit("{kind: constant, length: 256}", "{length: 256}"),
        "s.yaml:8:3: cache.segments.kind",
        "required field is missing",
        id="missing-segments-kind",
    ),
    pytest.param(
        edit("{kind: constant, length: 256}", "{kind: constant}"),
        "s.yaml:8:3: cache.segments",
        "segments of kind constant need a `length`",
        id="missing-constant-length",
    ),
    pytest.param(
        edit("{kind: constant, length: 256}", "{kind: logarithmic}"),
        "s.yaml:8:3: cache.segments",
        "segments of kind logarithmic need a `length`",
        id="missing-logarithmic-length",
    ),
    pytest.param(
        edit("{kind: constant, length: 256}", "{kind: explicit}"),
        "s.yaml:8:3: cache.segments",
        "explicit segments need a non-empty `boundaries` list",
        id="missing-boundaries",
    ),
    # fields that do not apply
    pytest.param(
        edit("  pool: mean\n", "  pool: mean\n  top_k: 2\n"),
        "s.yaml:14:10: aggregation.top_k",
        "applies to kind ssc only, not grm",
        id="top-k-without-ssc",
    ),
    pytest.param(
        edit("kind: grm\n  connector: separate\n  pool: mean", "kind: residual\n  pool: sum"),
        "s.yaml:12:9: aggregation.pool",
        "applies to gated aggregations (grm, soup, ssc) only, not residual",
        id="pool-on-residual",
    ),
    pytest.param(
        edit("kind: grm\n  connector: separate\n  pool: mean", "kind: none\n  connector: query"),
        "s.yaml:12:14: aggregation.connector",
        "applies to gated aggregations (grm, soup, ssc) only, not none",
        id="connector-on-none",
    ),
    pytest.param(
        edit("kind: grm\n  connector: separate\n  pool: mean", "kind: residual\n  gate_scale: 0.5"),
        "s.yaml:12:15: aggregation.gate_scale",
        "applies to gated aggregations (grm, soup, ssc) only, not residual",
        id="gate-scale-on-residual",
    ),
    pytest.param(
        BASE + "  decay_normalizer: 8\n",
        "s.yaml:16:21: layer.decay_normalizer",
        "recurrence linear has no decay g",
        id="decay-normalizer-on-linear",
    ),
    pytest.param(
        edit("recurrence: linear", "recurrence: gated_delta")
        + "compute:\n  read_form: attention\n",
        "s.yaml:17:14: compute.read_form",
        "attention form needs a memory that is a decayed sum of v k^T (decay or linear)",
        id="attention-form-on-gated-delta",
    ),
    pytest.param(
        BASE + "compute:\n  read_form: keys\n",
        "s.yaml:17:14: compute.read_form",
        "Input should be 'auto', 'state' or 'attention'",
        id="unknown-read-form",
    ),
    pytest.param(
        edit("recurrence: linear", "recurrence: delta") + "  decay_normalizer: 8\n",
        "s.yaml:16:21: layer.decay_normalizer",
        "recurrence delta has no decay g",
        id="decay-normalizer-on-delta",
    ),
    pytest.param(
        edit(
            "{kind: constant, length: 256}",
            "{kind: explicit, length: 256, boundaries: [128]}",
        ),
        "s.yaml:8:38: cache.segments.length",
        "does not apply to kind explicit",
        id="length-with-explicit",
    ),
    pytest.param(
        edit("{kind: constant, length: 256}", "{kind: constant, length: 256, boundaries: [8]}"),
        "s.yaml:8:43: cache.segments.boundaries",
        "does not apply to kind constant",
        id="boundaries-with-constant",
    ),
    pytest.param(
        edit("{kind: constant, length: 256}", "{kind: none, length: 256}"),
        "s.yaml:8:34: cache.segments.length",
        "does not apply to kind none",
        id="length-with-none",
    ),
    pytest.param(
        edit("{kind: constant, length: 256}", "{kind: explicit, boundaries: [128, 512, 512]}"),
        "s.yaml:8:53: cache.segments.boundaries.2",
        "boundaries must be strictly increasing, got 512 then 512",
        id="explicit-repeated-boundary",
    ),
    pytest.param(
        edit("{kind: constant, length: 256}", "{kind: explicit, boundaries: [512, 128]}"),
        "s.yaml:8:48: cache.segments.boundaries.1",
        "boundaries must be strictly increasing, got 512 then 128",
        id="explicit-decreasing",
    ),
    pytest.param(
        edit("{kind: constant, length: 256}", "{kind: explicit, boundaries: []}"),
        "s.yaml:8:3: cache.segments",
        "explicit segments need a non-empty `boundaries` list",
        id="explicit-empty-list",
    ),
]


@pytest.mark.parametrize(("text", "prefix", "fragment"), BAD)
def test_bad_spec_is_reported_where_it_is(text: str, prefix: str, fragment: str):
    check(text, prefix, fragment)


# --------------------------------------------------------------------------- names

HOSTILE_NAMES = [
    "x; import os",
    "import",
    "Grm",
    "class",
    "1grm",
    "grm-2",
    "grm.sub",
    "grm\\nimport os",
    "",
    "g" * 65,
    "os",
    "sys",
    "torch",
    "triton",
    "numpy",
    "mcgen",
    "__init__",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_name_must_be_a_safe_package_name(name: str):
    found = only_problem(edit("name: grm", f'name: "{name}"'))
    assert found.startswith("s.yaml:1:7: name: "), found
    assert "it names the generated package" in found


@pytest.mark.parametrize("name", ["grm", "my_grm_2", "_private", "x" * 64])
def test_name_accepts_package_names(name: str):
    assert parse_spec(edit("name: grm", f"name: {name}"), FILE).name == name


# --------------------------------------------------------------------------- files and YAML


def test_invalid_yaml_reports_its_line():
    found = only_problem(edit("  key_dim: 64\n", "    key_dim: 64\n"))
    assert found.startswith("s.yaml:5:12: invalid YAML: "), found
    assert "mapping values are not allowed here" in found


def test_unclosed_flow_mapping_is_invalid_yaml():
    found = only_problem(edit("length: 256}", "length: 256"))
    assert found.startswith("s.yaml:9:"), found
    assert "invalid YAML" in found


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(text: str):
    assert only_problem(text) == "s.yaml:1:1: the file is empty"


def test_missing_file(tmp_path: Path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        load_spec(path)
    # No position: the file has none to point at.
    assert [str(p) for p in info.value.problems] == [f"file not found: {path}"]


def test_load_spec_names_the_file_in_problems(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text(edit("heads: 4", "heads: 0"), encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}:4:10: memory.heads: ")


@pytest.mark.parametrize(
    "text",
    ["- name: grm\n- memory: {}\n", "grm\n", "42\n"],
    ids=["list", "string", "number"],
)
def test_top_level_must_be_a_mapping(text: str):
    found = only_problem(text)
    assert found.startswith("s.yaml:1:1: a spec is a mapping of fields"), found


def test_several_documents_are_invalid():
    found = only_problem(BASE + "---\n" + BASE)
    assert found.startswith("s.yaml:16:1: invalid YAML: "), found


def test_python_tags_are_refused_not_run():
    text = edit("name: grm", "name: !!python/object/apply:os.system ['echo pwned']")
    assert only_problem(text) == (
        "s.yaml:1:7: name: unsupported YAML tag !!python/object/apply:os.system"
    )


def test_custom_tag_on_a_mapping_is_refused():
    check(
        edit("layer:\n  d_model: 256\n", "layer: !thing {d_model: 256}\n"),
        "s.yaml:14:8: layer",
        "unsupported YAML tag !thing",
    )


def test_aliases_are_refused():
    text = edit("value_dim: 64", "value_dim: &d 64", "d_model: 256", "d_model: *d")
    assert only_problem(text) == (
        "s.yaml:15:12: aliases (*name) are not supported in a spec; write the value out"
    )


def test_recursive_alias_is_an_error_not_a_crash():
    found = only_problem("name: &a [*a]\n")
    assert found.startswith("s.yaml:1:11: aliases"), found


def test_keys_are_read_as_written():
    # In YAML 1.1 `on` is a boolean; as a key it must still read as the field "on".
    check(BASE + "on: 1\n", "s.yaml:16:1: on", "unknown field")


def test_scientific_notation_is_a_float():
    spec = parse_spec(edit("  pool: mean\n", "  pool: mean\n  gate_scale: 1e-3\n"), FILE)
    assert spec.aggregation.gate_scale == pytest.approx(1e-3)


def test_long_offending_values_are_shortened():
    found = only_problem(edit("heads: 4", "heads: " + "9" * 500 + "x"))
    assert found.startswith("s.yaml:4:10: memory.heads: Input should be a valid integer"), found
    assert len(found) < 200


# --------------------------------------------------------------------------- many problems


def test_all_problems_in_a_file_are_reported_in_order():
    text = edit(
        "name: grm",
        "name: Grm",
        "heads: 4",
        'heads: "4"',
        "  value_dim: 64\n",
        "  value_dim: 64\n  value_dim: 32\n",
        "pool: mean",
        "pool: max",
    )
    text += "colour: red\n"
    assert [p.split(": ")[0] + ": " + p.split(": ")[1] for p in problems(text)] == [
        "s.yaml:1:7: name",
        "s.yaml:4:10: memory.heads",
        "s.yaml:7:3: memory.value_dim",
        "s.yaml:14:9: aggregation.pool",
        "s.yaml:17:1: colour",
    ]


def test_all_rule_violations_are_reported():
    text = edit("  pool: mean\n", "  pool: mean\n  top_k: 2\n")
    text += "  decay_normalizer: 8\ncompute:\n  chunk_size: 48\n"
    found = problems(text)
    assert [p.split(": ")[0] + ": " + p.split(": ")[1] for p in found] == [
        "s.yaml:14:10: aggregation.top_k",
        "s.yaml:17:21: layer.decay_normalizer",
        "s.yaml:19:15: compute.chunk_size",
    ]


def test_an_unreadable_value_is_reported_once():
    found = problems(edit("heads: 4", "heads: !!int four", "key_dim: 64", "key_dim: x"))
    assert len(found) == 2
    assert found[0].startswith("s.yaml:4:10: memory.heads: cannot read this value")
    assert found[1].startswith("s.yaml:5:12: memory.key_dim: Input should be a valid integer")


def test_spec_error_message_lists_every_problem():
    with pytest.raises(SpecError) as info:
        parse_spec(edit("heads: 4", "heads: 0", "key_dim: 64", "key_dim: 0"), FILE)
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("s.yaml:4:10: memory.heads: ")
    assert lines[1].startswith("s.yaml:5:12: memory.key_dim: ")


def test_problem_without_a_path_has_no_empty_prefix():
    problem = SpecProblem("f.yaml", 3, 2, "", "the file is empty")
    assert str(problem) == "f.yaml:3:2: the file is empty"
    assert str(SpecProblem("f.yaml", 3, 2, "a.b", "bad")) == "f.yaml:3:2: a.b: bad"


# --------------------------------------------------------------------------- resolve


def with_aggregation(block: str, *, key_dim: int = 64) -> str:
    return edit(
        "  kind: grm\n  connector: separate\n  pool: mean\n",
        block,
        "key_dim: 64",
        f"key_dim: {key_dim}",
    )


def test_resolve_fills_top_k_for_ssc():
    assert parse_spec(with_aggregation("  kind: ssc\n"), FILE).aggregation.top_k == 4
    assert parse_spec(with_aggregation("  kind: ssc\n  top_k: 2\n"), FILE).aggregation.top_k == 2
    assert parse_spec(BASE, FILE).aggregation.top_k is None


@pytest.mark.parametrize("kind", ["grm", "soup", "ssc"])
def test_resolve_fills_gate_scale_for_gated_aggregations(kind: str):
    spec = parse_spec(with_aggregation(f"  kind: {kind}\n", key_dim=16), FILE)
    assert spec.aggregation.gate_scale == pytest.approx(16**-0.5)
    given = parse_spec(with_aggregation(f"  kind: {kind}\n  gate_scale: 2\n"), FILE)
    assert given.aggregation.gate_scale == 2.0


@pytest.mark.parametrize("kind", ["none", "residual"])
def test_ungated_aggregations_have_no_gate_scale(kind: str):
    assert parse_spec(with_aggregation(f"  kind: {kind}\n"), FILE).aggregation.gate_scale is None


@pytest.mark.parametrize(
    ("recurrence", "key_norm"),
    [("linear", "none"), ("decay", "none"), ("delta", "l2"), ("gated_delta", "l2")],
)
def test_resolve_key_norm_auto(recurrence: str, key_norm: str):
    text = edit("recurrence: linear", f"recurrence: {recurrence}")
    assert parse_spec(text, FILE).layer.key_norm == key_norm
    assert parse_spec(text + "  key_norm: auto\n", FILE).layer.key_norm == key_norm
    assert parse_spec(text + "  key_norm: none\n", FILE).layer.key_norm == "none"


@pytest.mark.parametrize(
    ("recurrence", "normalizer"),
    [("linear", None), ("delta", None), ("decay", 16.0), ("gated_delta", 16.0)],
)
def test_resolve_decay_normalizer(recurrence: str, normalizer: float | None):
    text = edit("recurrence: linear", f"recurrence: {recurrence}")
    assert parse_spec(text, FILE).layer.decay_normalizer == normalizer


def test_given_decay_normalizer_is_kept():
    text = edit("recurrence: linear", "recurrence: gated_delta") + "  decay_normalizer: 4\n"
    assert parse_spec(text, FILE).layer.decay_normalizer == 4.0


# --------------------------------------------------------------------------- hash

RESTYLED = """\
# The same spec as BASE: comments, another key order, flow and block style swapped.
layer: {d_model: 256}   # the module around the op
aggregation: {pool: mean, connector: separate, kind: grm}
cache:
  init: checkpoint
  segments:
    length: 256
    kind: constant
memory: {value_dim: 64, key_dim: 64, heads: 4, recurrence: linear}
name: 'grm'
"""


def base_hash(text: str = BASE) -> str:
    return spec_hash(parse_spec(text, FILE))


def test_hash_is_stable_under_style():
    assert base_hash(RESTYLED) == base_hash()


def test_hash_is_stable_under_explicit_defaults():
    explicit = BASE + "  key_norm: none\ncompute:\n  chunk_size: 64\n"
    assert base_hash(explicit) == base_hash()
    assert base_hash(edit("  pool: mean\n", "  pool: mean\n  gate_scale: 0.125\n")) == base_hash()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("heads: 4", "heads: 8"),
        ("length: 256", "length: 128"),
        ("init: checkpoint", "init: independent"),
        ("pool: mean", "pool: sum"),
        ("name: grm", "name: grm2"),
        ("d_model: 256", "d_model: 512"),
    ],
)
def test_hash_changes_with_any_value(old: str, new: str):
    assert base_hash(edit(old, new)) != base_hash()


# --------------------------------------------------------------------------- hostile text


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x0b", "\x7f", "\x9b", "\x07"])
def test_a_control_character_is_a_positioned_problem(char: str):
    found = only_problem(edit("kind: grm", f"kind: g{char}rm"))
    assert found.startswith("s.yaml:11:10: invalid YAML: control character"), found
    assert f"U+{ord(char):04X}" in found
    assert found.isprintable(), found


def test_a_control_character_on_the_first_line_is_found_there():
    found = only_problem(f"na{chr(0)}me: grm\n")
    assert found.startswith("s.yaml:1:3: invalid YAML: control character U+0000"), found


def test_terminal_escapes_in_a_key_are_shown_escaped():
    found = only_problem(BASE + '"\\e[31mred\\e[0m": 1\n')
    assert found.isprintable(), found
    assert found.startswith("s.yaml:16:1: \\x1b[31mred\\x1b[0m: unknown field"), found


def test_problems_escape_whatever_they_quote():
    problem = SpecProblem("a\x1bb.yaml", 1, 1, "x.\u202e", "bad\x07")
    assert str(problem) == "a\\x1bb.yaml:1:1: x.\\u202e: bad\\x07"


@pytest.mark.parametrize(
    ("written", "fragment"),
    [
        ("017", "`017` is an octal number in YAML 1.1 (read as 15)"),
        ("-07", "`-07` is an octal number in YAML 1.1 (read as -7)"),
        ("1:30", "`1:30` is a base-60 number in YAML 1.1 (read as 90)"),
    ],
)
def test_yaml_1_1_numbers_are_refused(written: str, fragment: str):
    check(edit("length: 256", f"length: {written}"), "s.yaml:8:38: cache.segments.length", fragment)


def test_a_yaml_1_1_base_60_float_is_refused():
    text = edit("  pool: mean\n", "  pool: mean\n  gate_scale: 1:30.5\n")
    check(text, "s.yaml:14:15: aggregation.gate_scale", "base-60 number in YAML 1.1")


@pytest.mark.parametrize("written", ["on", "Off", "yes", "NO"])
def test_yaml_1_1_booleans_are_refused(written: str):
    check(
        edit("pool: mean", f"pool: {written}"),
        "s.yaml:13:9: aggregation.pool",
        f"`{written}` is a boolean in YAML 1.1",
    )


@pytest.mark.parametrize(("written", "length"), [("0x1F", 31), ("8", 8), ("1_024", 1024)])
def test_unambiguous_numbers_are_read(written: str, length: int):
    assert parse_spec(edit("length: 256", f"length: {written}"), FILE).cache.segments.length == (
        length
    )


@pytest.mark.parametrize("written", ['"017"', "'1:30'"])
def test_quoted_numbers_are_text(written: str):
    check(
        edit("length: 256", f"length: {written}"),
        "s.yaml:8:38: cache.segments.length",
        "Input should be a valid integer",
    )


def test_reporting_many_unknown_keys_takes_linear_work():
    def report(n: int):
        text = BASE + "".join(f"k{i}: 1\n" for i in range(n))
        return lambda: problems(text)

    small, large = calls_made(report(500)), calls_made(report(1000))
    assert large < 2.5 * small, (small, large)


# --------------------------------------------------------------------------- names of modules


@pytest.mark.parametrize("name", ["typing_extensions", "sympy", "yaml", "pydantic", "pytest"])
def test_a_name_that_shadows_an_installed_module_is_refused(name: str):
    found = only_problem(edit("name: grm", f"name: {name}"))
    assert found.startswith("s.yaml:1:7: name: "), found
    assert "would shadow the installed module" in found


def test_an_installed_package_that_mcgen_generated_may_be_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / "my_layer").mkdir()
    (tmp_path / "my_layer" / "__init__.py").write_text("")
    (tmp_path / "my_layer" / "manifest.json").write_text("{}")
    (tmp_path / "other_module.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert parse_spec(edit("name: grm", "name: my_layer"), FILE).name == "my_layer"
    assert "would shadow" in only_problem(edit("name: grm", "name: other_module"))


# --------------------------------------------------------------------------- sizes


def test_a_memory_too_large_to_run_is_refused_with_its_size():
    text = edit("heads: 4", "heads: 1024", "key_dim: 64", "key_dim: 4096")
    text = edit("value_dim: 64", "value_dim: 4096", text=text)
    found = problems(text)
    memory = [p for p in found if p.startswith("s.yaml:2:1: memory: ")]
    assert memory, found
    assert "17,179,869,184 numbers" in memory[0], memory
    assert "at most 67,108,864" in memory[0], memory


def test_a_layer_with_too_many_parameters_is_refused_with_its_count():
    text = edit(
        "heads: 4", "heads: 64", "key_dim: 64", "key_dim: 1024", "d_model: 256", "d_model: 65536"
    )
    text = edit("value_dim: 64", "value_dim: 1024", text=text)
    found = only_problem(text)
    assert found.startswith("s.yaml:14:1: layer: "), found
    assert "21,474,836,480 weights" in found, found
    assert "at most 2,147,483,648" in found, found


@pytest.mark.parametrize(
    "boundary", ["1000000000000000000", "1" + "0" * 4000], ids=["1e18", "1e4000"]
)
def test_explicit_boundaries_are_bounded(boundary: str):
    text = edit("{kind: constant, length: 256}", f"{{kind: explicit, boundaries: [8, {boundary}]}}")
    found = only_problem(text)
    assert found.startswith("s.yaml:8:46: cache.segments.boundaries.1: "), found
    assert "less than or equal to 16777216" in found


def test_a_gate_scale_that_overflows_is_refused():
    check(
        edit("  pool: mean\n", "  pool: mean\n  gate_scale: 1e308\n"),
        "s.yaml:14:15: aggregation.gate_scale",
        "less than or equal to 1000",
    )


def test_the_ir_can_be_imported_before_the_spec_package():
    # mcgen.ir.graph imports the spec package, whose schema asks the component registry.
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "import mcgen.ir.graph"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("field", ["lr", "momentum", "decay"])
def test_deep_rates_are_bounded(field: str):
    text = edit("recurrence: linear", "recurrence: titans")
    text = edit("  value_dim: 64\n", f"  value_dim: 64\n  deep: {{{field}: 1e308}}\n", text=text)
    found = problems(text)  # the float's bound, and that it is not `data`
    assert found[0].startswith(f"s.yaml:7:10: memory.deep.{field}"), found
    assert "Input should be less than" in found[0], found
