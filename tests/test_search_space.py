"""The search-space file, the specs a trial draws from it, and one candidate's score."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from mcgen.search.objective import attention_baseline, base_rnn_spec, evaluate
from mcgen.search.space import SearchSpace, SearchSpaceError, parse_space, suggest_spec
from mcgen.spec import parse_spec

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "search" / "tiny.yaml"


def tiny_mapping() -> dict:
    return yaml.safe_load(TINY.read_text(encoding="utf-8"))


def problems_of(mapping: dict) -> str:
    with pytest.raises(SearchSpaceError) as caught:
        parse_space(yaml.safe_dump(mapping, sort_keys=False), "space.yaml")
    return str(caught.value)


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "search").glob("*.yaml")))
def test_example_spaces_load(name):
    space = parse_space((REPO / "search" / f"{name}.yaml").read_text(), f"{name}.yaml")
    assert space.name == name and space.objectives.cost == "decode_state_bytes"


def test_unknown_keys_are_named():
    mapping = tiny_mapping()
    mapping["train"]["lr"] = 0.1
    mapping["vary"]["aggregation.top_k"]["high_"] = 3
    message = problems_of(mapping)
    assert "train.lr: unknown field" in message
    assert "vary.aggregation.top_k.high_: unknown field" in message
    assert message.startswith("space.yaml:")


def test_bad_paths_and_empty_choices_are_named():
    mapping = tiny_mapping()
    mapping["vary"]["aggregation.topk"] = [1, 2]
    mapping["vary"]["top_k"] = [1]
    mapping["vary"]["cache.init"] = []
    mapping["base"]["layer"]["width"] = 8
    message = problems_of(mapping)
    assert "vary.cache.init: give at least one choice" in message
    mapping["vary"]["cache.init"] = ["checkpoint"]
    message = problems_of(mapping)
    assert "vary.aggregation.topk: not a spec field" in message
    assert "vary.top_k: not a spec field (did you mean aggregation.top_k?)" in message
    assert "base.layer.width: unknown spec field" in message
    # Each problem points at its own line.
    lines = {line.split(":")[1] for line in message.splitlines()}
    assert len(lines) == 3


def test_a_field_fixed_and_varied_and_a_bad_range_are_refused():
    mapping = tiny_mapping()
    mapping["vary"]["layer.d_model"] = [16, 32]
    mapping["vary"]["aggregation.top_k"] = {"low": 3, "high": 1}
    message = problems_of(mapping)
    assert "vary.aggregation.top_k: low 3 is above high 1" in message
    mapping["vary"]["aggregation.top_k"] = {"low": 1, "high": 2}
    assert "vary.layer.d_model: is also fixed in base" in problems_of(mapping)


def test_the_model_alone_checks_the_rules_too():
    mapping = tiny_mapping()
    mapping["vary"]["aggregation.topk"] = [1]
    with pytest.raises(ValueError, match="aggregation.topk: not a spec field"):
        SearchSpace.model_validate(mapping)


def test_fixed_trials_give_valid_specs_without_inapplicable_fields():
    space = parse_space(TINY.read_text())
    ssc = suggest_spec(
        optuna.trial.FixedTrial(
            {"aggregation.kind": "ssc", "cache.segments.length": 8, "aggregation.top_k": 2}
        ),
        space,
    )
    assert ssc["aggregation"] == {"kind": "ssc", "top_k": 2}
    assert ssc["cache"]["segments"] == {"kind": "constant", "length": 8}
    # top_k is not drawn at all for grm: FixedTrial would fail if it were asked for.
    grm = suggest_spec(
        optuna.trial.FixedTrial({"aggregation.kind": "grm", "cache.segments.length": 4}), space
    )
    assert grm["aggregation"] == {"kind": "grm"}
    for mapping in (ssc, grm):
        spec = parse_spec(yaml.safe_dump(mapping))
        assert spec.layer.d_model == 16 and spec.name.startswith("tiny_")
    assert ssc["name"] != grm["name"]


def test_a_seeded_study_draws_only_valid_specs():
    space = parse_space((REPO / "search" / "mqar_small.yaml").read_text())
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1)
    )
    kinds = set()
    for _ in range(20):
        trial = study.ask()
        mapping = suggest_spec(trial, space)
        kind = mapping["aggregation"]["kind"]
        kinds.add(kind)
        assert ("top_k" in mapping["aggregation"]) == (kind == "ssc")
        assert ("aggregation.top_k" in trial.params) == (kind == "ssc")
        parse_spec(yaml.safe_dump(mapping))
    assert kinds == {"none", "residual", "grm", "ssc"}


def test_base_rnn_spec_has_no_cache():
    space = parse_space(TINY.read_text())
    base = base_rnn_spec(space)
    assert base["aggregation"] == {"kind": "none"}
    assert base["cache"]["segments"] == {"kind": "none"}
    assert base["layer"] == {"d_model": 16}


def test_evaluate_a_tiny_candidate(tmp_path):
    space = parse_space(TINY.read_text())
    mapping = suggest_spec(
        optuna.trial.FixedTrial(
            {"aggregation.kind": "ssc", "cache.segments.length": 4, "aggregation.top_k": 2}
        ),
        space,
    )
    result = evaluate(mapping, space, tmp_path)
    assert 0.0 <= result.accuracy <= 1.0
    assert result.cost > 0 and result.best_lr in space.train.learning_rates
    assert result.accuracy == max(result.by_lr.values())
    assert set(result.per_slice) == {"num_pairs=2,seq_len=16"}
    assert parse_spec(result.spec_text).name == mapping["name"]
    assert (tmp_path / "generated" / mapping["name"] / "manifest.json").is_file()
    # Caching costs decode state: the base RNN holds less.
    assert evaluate(base_rnn_spec(space), space, tmp_path).cost < result.cost
    attention = attention_baseline(space)
    assert 0.0 <= attention.accuracy <= 1.0 and attention.cost > 0


# --- deep memories and other choices that interact ------------------------------------


def deep_mapping(**deep) -> dict:
    mapping = tiny_mapping()
    mapping["base"]["memory"] = {"heads": 2, "key_dim": 8, "value_dim": 8}
    if deep:
        mapping["base"]["memory"]["deep"] = deep
    mapping["vary"]["memory.recurrence"] = ["linear", "dla", "titans"]
    return mapping


def test_deep_recurrences_draw_valid_specs():
    space = parse_space(yaml.safe_dump(deep_mapping(minibatch=4, depth=1)), "deep.yaml")
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=3)
    )
    seen = set()
    for _ in range(40):
        mapping = suggest_spec(study.ask(), space)
        spec = parse_spec(yaml.safe_dump(mapping))
        recurrence = spec.memory.recurrence
        seen.add(recurrence)
        if recurrence == "linear":
            assert "deep" not in mapping["memory"]  # dropped: applies to dla, titans only
        else:
            assert mapping["memory"]["deep"] == {"minibatch": 4, "depth": 1}
            assert spec.memory.deep.minibatch == 4
    assert seen == {"linear", "dla", "titans"}


def test_a_deep_choice_that_cannot_be_built_is_a_positioned_error():
    # value_dim != key_dim: a deep memory maps keys to values of the same size.
    mapping = deep_mapping()
    mapping["base"]["memory"]["value_dim"] = 16
    message = problems_of(mapping)
    assert "vary.memory.recurrence.1: 'dla' gives an invalid spec: memory.value_dim:" in message
    assert "vary.memory.recurrence.2: 'titans' gives an invalid spec" in message
    assert message.splitlines()[0].startswith("space.yaml:")
    # A mini-batch of 8 does not divide the segment length 4 (one of the choices).
    message = problems_of(deep_mapping(minibatch=8))
    assert (
        "vary.cache.segments.length.0: 4 with memory.recurrence 'dla' gives an invalid spec: "
        "memory.deep.minibatch: must divide the segment length" in message
    )
    assert "length.1" not in message  # 8 is fine
    # Three fields at once: only dla, with mini-batch 8, and segments of 4 fail.
    mapping = deep_mapping()
    mapping["vary"]["cache.segments.length"] = [8, 4]
    mapping["vary"]["memory.deep.minibatch"] = [1, 8]
    message = problems_of(mapping)
    assert "vary.memory.deep.minibatch.1: 8 with aggregation.kind 'none', " in message
    assert "cache.segments.length 4" in message and "memory.recurrence 'dla'" in message


def test_a_budget_and_the_gpu_latency_cost_are_part_of_the_schema():
    mapping = tiny_mapping()
    mapping["objectives"] = {"cost": "gpu_latency_ms", "max_decode_state_bytes": 4096}
    space = parse_space(yaml.safe_dump(mapping))
    assert space.objectives.max_decode_state_bytes == 4096
    mapping["objectives"] = {"cost": "latency"}
    assert "objectives.cost: Input should be" in problems_of(mapping)
