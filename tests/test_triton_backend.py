"""backend="triton": the generated kernels and their glue against the fp64 reference.

Under Triton's interpreter (conftest.py sets TRITON_INTERPRET=1), on tiny shapes: every
matrix-memory spec of specs/ (linear, decay, delta, gated_delta) shrunk to tiny sizes with
its structure kept, extra
shapes (T not a multiple of the chunk or segment, K != V, sizes that are not powers of
two, one segment, more and fewer segments than top_k, both read forms), streams in
pieces, packed sequences, the dispatch rules and torch.compile. Every buffer the
launchers allocate is filled with NaN first (`poisoned`), so a slot a kernel forgets to
write shows up as a NaN in the result.
"""

from __future__ import annotations

import contextlib
import importlib
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from mcgen.codegen.package import has_triton, render_package
from mcgen.packages import import_package
from mcgen.passes.pipeline import compile_spec
from mcgen.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]
# Relative RMS error allowed (outputs, gradients): docs/design.md.
TOLERANCES = {torch.float32: (1e-5, 2e-5), torch.bfloat16: (2e-2, 4e-2)}
CACHE_FIELDS = ("state", "states", "descriptors", "prefix_sum")


def _spec_names() -> list[str]:
    names = []
    for path in sorted((ROOT / "specs").glob("*.yaml")):
        spec = parse_spec(path.read_text(), str(path))
        if has_triton(compile_spec(spec).plan):
            names.append(path.stem)
    return names


TRITON_SPECS = _spec_names()


def _shrunk(name: str) -> str:
    """specs/<name>.yaml at tiny sizes, structure kept: 2 heads of 8, segments 32x shorter
    (constant 8, logarithmic 2), chunks of 4, d_model 16."""
    data = yaml.safe_load((ROOT / "specs" / f"{name}.yaml").read_text())
    data["memory"].update(heads=2, key_dim=8, value_dim=8)
    segments = data["cache"]["segments"]
    if "length" in segments:
        segments["length"] = max(2, segments["length"] // 32)
    if "boundaries" in segments:
        segments["boundaries"] = [b // 32 for b in segments["boundaries"]]
    data["layer"]["d_model"] = 16
    data.setdefault("compute", {})["chunk_size"] = 4
    return yaml.safe_dump(data, sort_keys=False)


@pytest.fixture(scope="module")
def build_text(tmp_path_factory):
    """build_text(yaml_text) -> the imported package (cached per text)."""
    built: dict[str, object] = {}
    root = tmp_path_factory.mktemp("triton_packages")

    def build(text: str, where: str | None = None):
        key = text if where is None else f"{where}\n{text}"
        if key not in built:
            spec = parse_spec(text, "tiny.yaml")
            package = render_package(spec, compile_spec(spec).plan, command="mcgen build t.yaml")
            built[key] = import_package(package.write(root / (where or f"p{len(built)}")))
        return built[key]

    return build


def _module(package, name: str):
    return importlib.import_module(f"{package.__name__}.{name}")


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


@contextlib.contextmanager
def poisoned(package):
    """Every tensor the kernel launchers allocate starts as NaN (torch.empty, new_empty)."""
    real_empty, real_new_empty = torch.empty, torch.Tensor.new_empty

    def fill(out):
        if out.is_floating_point():
            out.fill_(float("nan"))
        return out

    def empty(*args, **kwargs):
        return fill(real_empty(*args, **kwargs))

    def new_empty(self, *args, **kwargs):
        return fill(real_new_empty(self, *args, **kwargs))

    attention = f"{package.__name__}.triton_read_attention"
    module = sys.modules.get(attention) or (
        importlib.import_module(attention) if _has_file(package, "triton_read_attention") else None
    )
    torch.empty, torch.Tensor.new_empty = empty, new_empty
    if module is not None:
        module.POISON_OUTPUTS = True
    try:
        yield
    finally:
        torch.empty, torch.Tensor.new_empty = real_empty, real_new_empty
        if module is not None:
            module.POISON_OUTPUTS = False


def _has_file(package, name: str) -> bool:
    return (Path(package.__file__).parent / f"{name}.py").is_file()


def _against_reference(package, shape, dtype=torch.float32, *, seed=0) -> dict[str, float]:
    """Relative errors of backend="triton" against the fp64 reference: output, every gradient."""
    selftest = _module(package, "selftest")
    inputs = selftest.make_inputs(*shape, dtype=dtype, seed=seed)
    leaves = {n: x.detach().clone().requires_grad_(True) for n, x in inputs.items()}
    ref_leaves = {n: x.detach().double().requires_grad_(True) for n, x in inputs.items()}
    with poisoned(package):
        out = package.mc_forward(**leaves, backend="triton")
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1))
        (out.double() * upstream.double()).sum().backward()
    ref = package.reference(**ref_leaves)
    (ref * upstream.double()).sum().backward()
    assert out.dtype == dtype and out.shape == ref.shape
    errors = {"output": _rel(out, ref)}
    for name, leaf in leaves.items():
        assert leaf.grad is not None, name
        errors[f"grad {name}"] = _rel(leaf.grad, ref_leaves[name].grad)
    return errors


def _assert_within(errors: dict[str, float], dtype=torch.float32) -> None:
    tol_out, tol_grad = TOLERANCES[dtype]
    bad = {k: v for k, v in errors.items() if not v <= (tol_out if k == "output" else tol_grad)}
    assert not bad, f"{dtype}: {bad} (all: {errors})"


# -- every matrix-memory spec of specs/, shrunk ---------------------------------------------


def test_the_specs_with_triton_kernels_are_the_matrix_memory_ones() -> None:
    assert TRITON_SPECS == [
        "grm",
        "grm_decay",
        "grm_delta",
        "grm_gated_delta",
        "grm_independent",
        "grm_log",
        "none",
        "residual",
        "residual_explicit",
        "soup",
        "ssc",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", TRITON_SPECS)
def test_every_spec_matches_the_reference_fp32_and_bf16(build_text, name: str) -> None:
    package = build_text(_shrunk(name))
    assert package.BACKENDS == ("torch", "triton")
    # 45 tokens: past five segments of 8 (ssc's top_k is 4), mid-segment and mid-chunk.
    for dtype in (torch.float32, torch.bfloat16):
        _assert_within(_against_reference(package, (1, 45, 2, 8, 8), dtype), dtype)


# -- extra shapes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "shape"),
    [
        # T = 23: not a multiple of the chunk (4) or the segment (8); K != V, neither a
        # power of two.
        ({}, (2, 23, 2, 6, 10)),
        ({"recurrence": "decay"}, (1, 23, 3, 12, 6)),
        # One segment: nothing cached yet (T < 8), and exactly one complete segment.
        ({}, (2, 7, 2, 8, 8)),
        ({"recurrence": "decay", "init": "independent"}, (1, 8, 2, 8, 8)),
        ({"segments": "{kind: logarithmic, length: 2}"}, (1, 19, 2, 5, 8)),
        (
            {"segments": "{kind: explicit, boundaries: [3, 7, 12]}", "aggregation": "residual"},
            (2, 17, 2, 8, 7),
        ),
        (
            {"aggregation": "grm", "aggregation_extra": ", connector: query, pool: sum"},
            (1, 21, 2, 8, 8),
        ),
        ({"aggregation": "none", "segments": "{kind: none}"}, (2, 13, 2, 6, 10)),
        # The delta rules: an ssc read, and independent segments (the scan restarts).
        (
            {"recurrence": "delta", "aggregation": "ssc", "aggregation_extra": ", top_k: 2"},
            (1, 45, 2, 6, 10),
        ),
        ({"recurrence": "gated_delta", "init": "independent"}, (2, 23, 2, 8, 8)),
    ],
    ids=[
        "linear-odd",
        "decay-odd",
        "one-open-segment",
        "one-segment",
        "logarithmic",
        "explicit-residual",
        "query-sum",
        "none",
        "delta-ssc",
        "gated-delta-independent",
    ],
)
def test_extra_shapes(build_tiny, fields: dict, shape: tuple) -> None:
    package = build_tiny(**fields)
    _assert_within(_against_reference(package, shape))


@pytest.mark.slow
@pytest.mark.parametrize("top_k", [2, 8], ids=["more-segments-than-top-k", "fewer"])
def test_ssc_with_more_and_fewer_segments_than_top_k(build_tiny, top_k: int) -> None:
    package = build_tiny(aggregation="ssc", aggregation_extra=f", top_k: {top_k}")
    _assert_within(_against_reference(package, (1, 45, 2, 8, 8)))  # five segments and a bit


@pytest.mark.slow
@pytest.mark.parametrize(
    "fields",
    [
        {"recurrence": "linear", "init": "checkpoint"},
        {"recurrence": "decay", "init": "checkpoint", "aggregation": "residual"},
        {
            "recurrence": "linear",
            "init": "independent",
            "aggregation": "ssc",
            "aggregation_extra": ", top_k: 2",
        },
        {"recurrence": "decay", "init": "independent"},
    ],
    ids=[
        "linear-checkpoint-grm",
        "decay-checkpoint-residual",
        "linear-independent-ssc",
        "decay-independent-grm",
    ],
)
def test_attention_form(build_tiny, fields: dict) -> None:
    package = build_tiny(read_form="attention", **fields)
    assert _has_file(package, "triton_read_attention")
    _assert_within(_against_reference(package, (1, 29, 2, 6, 10)))


# -- streams, packed sequences -------------------------------------------------------------


def _grads_through(package, backend, inputs, run):
    """(outputs, caches, input gradients) of run(leaves) -> (outputs, caches), for a loss
    over every output and every cache tensor (so gradients flow back through caches)."""
    leaves = {n: x.detach().clone().requires_grad_(True) for n, x in inputs.items()}
    outputs, caches = run(package, backend, leaves)
    gen = torch.Generator().manual_seed(7)
    loss = sum((o.double() * torch.randn(o.shape, generator=gen).double()).sum() for o in outputs)
    for cache in caches:
        for field in CACHE_FIELDS:
            tensor = getattr(cache, field)
            weight = torch.randn(tensor.shape, generator=gen)  # drawn whatever the backend
            if tensor.requires_grad:
                loss = loss + (tensor * weight).sum()
    loss.backward()
    return outputs, caches, {n: x.grad for n, x in leaves.items()}


def _in_pieces(package, backend, leaves, cuts=(0, 7, 16, 29)):
    """The call cut into pieces, the cache passed along (it carries gradients too)."""
    cache, outputs = None, []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        part = {n: x[:, a:b] for n, x in leaves.items()}
        out, cache = package.mc_forward(
            **part, backend=backend, initial_cache=cache, output_cache=True
        )
        outputs.append(out)
    return outputs, [cache]


def _compare(package, run, inputs) -> dict[str, float]:
    """triton against torch (itself checked against the reference by test_semantics)."""
    with poisoned(package):
        t_out, t_caches, t_grads = _grads_through(package, "triton", inputs, run)
    out, caches, grads = _grads_through(package, "torch", inputs, run)
    errors = {
        f"output {i}": _rel(a, b)
        for i, (a, b) in enumerate(zip(t_out, out, strict=True))
        if b.numel()
    }
    for i, (mine, theirs) in enumerate(zip(t_caches, caches, strict=True)):
        assert mine.position == theirs.position
        for field in CACHE_FIELDS:
            a, b = getattr(mine, field), getattr(theirs, field)
            assert a.shape == b.shape and a.dtype == b.dtype, (field, a.shape, b.shape)
            if b.numel() and b.norm() > 0:
                errors[f"cache {i} {field}"] = _rel(a, b)
    for name, grad in grads.items():
        errors[f"grad {name}"] = _rel(t_grads[name], grad)
    return errors


@pytest.mark.slow
@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"recurrence": "decay", "init": "independent"},
        {"aggregation": "ssc", "aggregation_extra": ", top_k: 2", "read_form": "attention"},
        {"aggregation": "ssc", "aggregation_extra": ", top_k: 2"},
        {"recurrence": "gated_delta"},
    ],
    ids=["grm", "decay-independent", "ssc-attention", "ssc", "gated-delta"],
)
def test_pieces_with_caches_equal_the_whole_call(build_tiny, fields: dict) -> None:
    package = build_tiny(**fields)
    inputs = _module(package, "selftest").make_inputs(2, 29, 2, 8, 6, dtype=torch.float32)
    whole = package.mc_forward(**inputs, backend="triton")
    pieces, _ = _in_pieces(package, "triton", inputs)
    assert _rel(torch.cat(pieces, dim=1), whole) <= 1e-5
    # The caches and the gradients of every input, through the caches passed along.
    errors = _compare(package, _in_pieces, inputs)
    assert max(errors.values()) <= 2e-5, errors


def _packed(package, backend, leaves, cu_seqlens=(0, 9, 9, 25, 30)):
    out, caches = package.mc_forward(
        **leaves, backend=backend, cu_seqlens=list(cu_seqlens), output_cache=True
    )
    return [out], caches


@pytest.mark.slow
@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"recurrence": "decay", "read_form": "attention"},
        {"aggregation": "ssc", "aggregation_extra": ", top_k: 2"},
        {"recurrence": "delta", "init": "independent"},
    ],
    ids=["grm", "decay-attn", "ssc", "delta-independent"],
)
def test_packed_sequences(build_tiny, fields: dict) -> None:
    package = build_tiny(**fields)
    inputs = _module(package, "selftest").make_inputs(1, 30, 2, 8, 8, dtype=torch.float32)
    errors = _compare(package, _packed, inputs)  # an empty sequence among them
    assert max(errors.values()) <= 2e-5, errors
    # Each packed sequence is a call of its own.
    out, _ = _packed(package, "triton", inputs)
    alone = package.mc_forward(**{n: x[:, 9:25] for n, x in inputs.items()}, backend="triton")
    assert _rel(out[0][:, 9:25], alone) <= 1e-5


@pytest.mark.parametrize("recurrence", ["decay", "gated_delta"])
def test_prefill_then_decode_with_mc_step(build_tiny, recurrence: str) -> None:
    package = build_tiny(recurrence=recurrence)
    selftest = _module(package, "selftest")
    checks = selftest.check_streaming("triton", torch.float32, (2, 21, 2, 8, 8))
    assert {c.quantity for c in checks} == {"pieces", "decode"}
    assert all(c.passed for c in checks), selftest.format_table(checks)


# -- dispatch --------------------------------------------------------------------------------


def test_dispatch_rules(build_tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    package = build_tiny(recurrence="decay")
    ops = _module(package, "ops")
    pick = ops._pick_backend
    cuda = SimpleNamespace(is_cuda=True, dtype=torch.float32)
    assert pick("auto", cuda) == "triton"
    assert pick("auto", SimpleNamespace(is_cuda=True, dtype=torch.float64)) == "torch"
    x = _module(package, "selftest").make_inputs(1, 6, 2, 8, 8, dtype=torch.float32)
    assert pick("auto", x["q"]) == "torch"  # CPU tensors: torch unless asked
    assert pick("triton", x["q"]) == "triton"  # the interpreter (TRITON_INTERPRET=1 here)
    with pytest.raises(ValueError, match="float64"):
        package.mc_forward(**{n: t.double() for n, t in x.items()}, backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        package.mc_forward(**x, backend="triton")
    assert pick("auto", x["q"]) == "torch"
    monkeypatch.undo()
    # The kernels imported without the interpreter cannot run on CPU tensors either.
    backend = _module(package, "backend_triton")
    monkeypatch.setattr(backend, "INTERPRET", False)
    with pytest.raises(RuntimeError, match="interpreter"):
        package.mc_forward(**x, backend="triton")


def test_importing_a_package_imports_no_kernels() -> None:
    script = (
        "import sys; sys.path.insert(0, 'generated'); import grm; "
        "grm.mc_forward(*[__import__('torch').randn(1, 3, 4, 64)] * 3, "
        "u=__import__('torch').randn(1, 3, 4, 64)); "
        "assert 'grm.backend_triton' not in sys.modules; "
        "assert not [m for m in sys.modules if m.startswith('grm.triton_')]"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_the_same_code_imported_twice_shares_its_custom_ops(build_text) -> None:
    text = _shrunk("grm")
    first, second = build_text(text, "first"), build_text(text, "second")
    assert first is not second
    names = [_module(p, "backend_triton").NAMESPACE for p in (first, second)]
    assert names[0] == names[1]
    x = _module(first, "selftest").make_inputs(1, 10, 2, 8, 8, dtype=torch.float32)
    assert torch.equal(
        first.mc_forward(**x, backend="triton"), second.mc_forward(**x, backend="triton")
    )


def _op_arguments(package, *, cut: int = 13):
    """FORWARD_OP's arguments for the tokens after `cut` of a 21-token call, continuing the
    cache the first `cut` tokens left (one memory cached: the piece starts mid-segment)."""
    backend = _module(package, "backend_triton")
    x = _module(package, "selftest").make_inputs(1, 21, 2, 8, 8, dtype=torch.float32)
    _, cache = package.mc_forward(**{n: t[:, :cut] for n, t in x.items()}, output_cache=True)
    assert cache.num_cached == 1
    tensors = [t[:, cut:].clone().requires_grad_(True) for t in x.values()]
    cached = [getattr(cache, f).clone().requires_grad_(True) for f in backend.CACHE_TENSORS]
    return backend, x, [*tensors, *cached], [0, 8, cache.position, cache.num_cached]


@pytest.mark.slow
@pytest.mark.parametrize("aggregation", ["grm", "residual"])
def test_the_custom_op_passes_opcheck(build_tiny, aggregation: str) -> None:
    """torch.library.opcheck: schema, fake (meta) outputs against real ones, autograd."""
    package = build_tiny(recurrence="decay", aggregation=aggregation)
    backend, x, tensors, pieces = _op_arguments(package)
    torch.library.opcheck(backend.FORWARD_OP, (*tensors, 0.35, pieces))
    # Packed sequences (one of them empty), fresh caches.
    empty = package.MCCache.empty(1, 2, 8, 8)
    fresh = [getattr(empty, f) for f in backend.CACHE_TENSORS]
    packed = [0, 5, 0, 0, 5, 0, 0, 0, 5, 16, 0, 0]
    tensors = [t.clone().requires_grad_(True) for t in x.values()]
    torch.library.opcheck(backend.FORWARD_OP, (*tensors, *fresh, 0.35, packed))


@pytest.mark.parametrize(
    ("aggregation", "kept_shapes"),
    [("residual", []), ("grm", [(1, 8, 2, 8), (1, 8, 2)])],
)
def test_the_op_keeps_for_its_backward_only_what_the_read_needs(
    build_tiny, aggregation: str, kept_shapes: list
) -> None:
    """Besides its inputs, the op saves the gated read's output and normaliser (its backward
    reads them), and nothing for the residual read (an unweighted sum)."""
    package = build_tiny(recurrence="decay", aggregation=aggregation)
    backend, _, tensors, pieces = _op_arguments(package)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        outputs = backend.FORWARD_OP(*tensors, 0.35, pieces)
    inputs = {t.data_ptr() for t in tensors}
    kept = [tuple(t.shape) for t in saved if t.data_ptr() not in inputs]
    assert kept == kept_shapes
    assert len(saved) == len(tensors) + len(kept_shapes)
    assert len(outputs) == 1 + len(backend.CACHE_TENSORS) + len(kept_shapes)


# -- torch.compile ---------------------------------------------------------------------------


@pytest.mark.slow
def test_torch_compile_fullgraph_has_no_graph_break(build_tiny) -> None:
    package = build_tiny(recurrence="decay", aggregation="ssc", aggregation_extra=", top_k: 2")
    torch.manual_seed(0)
    layer = package.MCLayer(16, backend="triton")
    torch._dynamo.reset()
    # fullgraph=True raises on any graph break; inductor compiles the rest (a C compiler).
    compiled = torch.compile(layer, fullgraph=True)
    # A second length makes torch.compile try dynamic shapes: the layout (host-side) must
    # still come out concrete, one graph per length.
    for seq_len in (19, 22):
        x = torch.randn(2, seq_len, 16, requires_grad=True)
        y = compiled(x)
        y.square().sum().backward()
        grad, x.grad = x.grad, None
        eager = layer(x)
        eager.square().sum().backward()
        assert _rel(y, eager) <= 1e-6
        assert _rel(grad, x.grad) <= 1e-6
    torch._dynamo.reset()
