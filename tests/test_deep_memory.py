"""Deep memories (dla, titans): the torch backend against the fp64 reference, streaming,
and where Memory Soup differs from GRM (docs/method.md section 6)."""

from __future__ import annotations

import importlib
import itertools

import pytest
import torch

from mcgen.codegen.package import render_package
from mcgen.packages import import_package
from mcgen.passes.pipeline import compile_spec
from mcgen.spec import parse_spec

SEGMENTS = {
    "constant": "{kind: constant, length: 8}",
    "logarithmic": "{kind: logarithmic, length: 4}",
    "explicit": "{kind: explicit, boundaries: [4, 12, 16, 20]}",
    "none": "{kind: none}",
}
AGGREGATIONS = {
    "none": "none",
    "residual": "residual",
    "grm": "grm",
    "grm_query_sum": "grm, connector: query, pool: sum",
    "soup": "soup",
    "ssc": "ssc, top_k: 2",
}
MEMORIES = {
    "per_token": "{}",
    "minibatch": "{minibatch: 4}",
    "constants": "{minibatch: 2, lr: 0.05, depth: 3, activation: silu, MORE}",
    "linear_mlp": "{depth: 1, activation: tanh, minibatch: 4}",
}


def deep_spec_text(recurrence, segments, init, aggregation, memory):
    memory = memory.replace(
        "MORE", "momentum: 0.5, decay: 0.1" if recurrence == "titans" else "expansion: 3"
    )
    return (
        "name: deep\n"
        f"memory: {{recurrence: {recurrence}, heads: 2, key_dim: 8, value_dim: 8, "
        f"deep: {memory}}}\n"
        f"cache: {{segments: {SEGMENTS[segments]}, init: {init}}}\n"
        f"aggregation: {{kind: {AGGREGATIONS[aggregation]}}}\n"
        "layer: {d_model: 16}\n"
    )


@pytest.fixture(scope="module")
def build_deep(tmp_path_factory):
    built = {}
    root = tmp_path_factory.mktemp("deep_packages")

    def build(
        recurrence="titans",
        segments="constant",
        init="checkpoint",
        aggregation="grm",
        memory="per_token",
    ):
        text = deep_spec_text(recurrence, segments, init, aggregation, MEMORIES[memory])
        if text not in built:
            spec = parse_spec(text, "deep.yaml")
            package = render_package(spec, compile_spec(spec).plan, command="mcgen build deep.yaml")
            built[text] = import_package(package.write(root / f"p{len(built)}"))
        return built[text]

    return build


def _selftest(package):
    return importlib.import_module(f"{package.__name__}.selftest")


def _rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


CASES = [
    *itertools.product(
        ["dla", "titans"],
        ["constant", "logarithmic"],
        ["checkpoint", "independent"],
        list(AGGREGATIONS),
        ["per_token", "minibatch"],
    ),
    *(
        (rec, seg, "checkpoint", agg, mem)
        for rec in ("dla", "titans")
        for seg in ("explicit", "none")
        for agg in ("grm", "soup", "ssc")
        for mem in ("constants", "linear_mlp")
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("recurrence, segments, init, aggregation, memory", CASES)
def test_torch_backend_matches_reference_and_streams(
    build_deep, recurrence, segments, init, aggregation, memory
):
    package = build_deep(recurrence, segments, init, aggregation, memory)
    selftest = _selftest(package)
    shape = (2, 29, 2, 8, 8)
    checks = selftest.check_against_reference("torch", torch.float64, shape, seed=5)
    checks += selftest.check_streaming("torch", torch.float64, shape, seed=5)
    names = [c.quantity for c in checks]
    assert "grad weights.0" in names and names[-2:] == ["pieces", "decode"]
    for check in checks:
        assert check.error < 1e-10, check


@pytest.mark.parametrize("aggregation", ["grm", "soup", "ssc"])
def test_fp32_and_bf16_within_tolerance(build_deep, aggregation):
    selftest = _selftest(
        build_deep("titans", "logarithmic", "checkpoint", aggregation, "minibatch")
    )
    for dtype in (torch.float32, torch.bfloat16):
        for check in selftest.check_against_reference("torch", dtype, (1, 23, 3, 12, 12)):
            assert check.passed, check


@pytest.mark.parametrize("recurrence", ["dla", "titans"])
def test_soup_differs_from_grm_for_deep_memories(build_deep, recurrence):
    soup = build_deep(recurrence, aggregation="soup")
    grm = build_deep(recurrence, aggregation="grm")
    inputs = _selftest(soup).make_inputs(1, 29, 2, 8, 8, dtype=torch.float64, seed=2)
    # Mixing an MLP's weights is not mixing its outputs: the two must differ here ...
    assert _rel(soup.reference(**inputs), grm.reference(**inputs)) > 1e-5  # equal would be ~1e-16
    # ... and the IR keeps soup (for a matrix memory it would have become grm).
    assert (
        compile_spec(
            parse_spec(deep_spec_text(recurrence, "constant", "checkpoint", "soup", "{}"))
        ).plan.aggregation
        == "soup"
    )


def test_soup_equals_grm_when_the_memory_is_linear_in_its_weights(build_deep):
    # depth 1 reads M(x) = x + W x, linear in W: mixing weights then equals mixing reads,
    # except for the identity part, which both weight sums keep at 1.
    soup = build_deep("dla", "explicit", "checkpoint", "soup", "linear_mlp")
    grm = build_deep("dla", "explicit", "checkpoint", "grm", "linear_mlp")
    inputs = _selftest(soup).make_inputs(1, 29, 2, 8, 8, dtype=torch.float64, seed=4)
    assert _rel(soup.reference(**inputs), grm.reference(**inputs)) < 1e-12


def test_state_size_matches_the_cache(build_deep):
    for aggregation in ("none", "residual", "soup", "ssc"):
        package = build_deep("titans", "constant", "checkpoint", aggregation, "minibatch")
        inputs = _selftest(package).make_inputs(1, 22, 2, 8, 8, dtype=torch.float64)
        _, cache = package.mc_forward(**inputs, output_cache=True)
        assert package.MCLayer(16, heads=2, key_dim=8).state_size(22) == cache.numel()


@pytest.mark.parametrize("aggregation", ["grm", "soup", "ssc"])
def test_layer_trains(build_deep, aggregation):
    package = build_deep("titans", "constant", "checkpoint", aggregation, "minibatch")
    torch.manual_seed(0)
    layer = package.MCLayer(16, layer_idx=0, heads=2, key_dim=8)
    x = torch.randn(2, 21, 16, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
    assert layer.memory_init[0].grad.abs().sum() > 0  # the initial memory is learnt


def test_bad_calls_are_explained(build_deep):
    package = build_deep("titans")
    inputs = _selftest(package).make_inputs(1, 5, 2, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="initial `weights`"):
        package.mc_forward(**{**inputs, "weights": None})
    with pytest.raises(ValueError, match="weights must have shapes"):
        package.mc_forward(**{**inputs, "weights": inputs["weights"][:1]})
    with pytest.raises(ValueError, match="needs eta"):
        package.mc_forward(**{**inputs, "eta": None})


@pytest.mark.slow
@pytest.mark.parametrize("recurrence", ["dla", "titans"])
@pytest.mark.parametrize("memory", ["per_token", "minibatch"])
def test_default_layer_stays_finite_over_long_sequences(build_deep, recurrence, memory):
    # The layer's initial rates keep the inner optimisation stable: no NaN after 600
    # tokens of random input, whatever the mini-batch size.
    package = build_deep(recurrence, "constant", "checkpoint", "grm", memory)
    torch.manual_seed(0)
    layer = package.MCLayer(16, heads=2, key_dim=8)
    with torch.no_grad():
        y = layer(torch.randn(2, 600, 16))
    assert torch.isfinite(y).all()
