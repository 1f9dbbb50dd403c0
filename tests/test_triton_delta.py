"""The Triton kernels of the delta rules (templates/package/triton_delta.py.jinja) against a
plain torch loop over tokens.

The template is rendered for specs/grm_delta.yaml and specs/grm_gated_delta.yaml into a
temporary package and its recurrence_fwd / recurrence_bwd run under Triton's interpreter
(conftest sets TRITON_INTERPRET). The reference walks the same chunk table token by token in
fp64; autograd through it gives every gradient (dbeta and dg included).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from spec_helpers import make_spec

from mcgen import __version__
from mcgen.codegen.package import render_package
from mcgen.codegen.templates import environment
from mcgen.kernels.compile import ARCHS, Compiled
from mcgen.packages import import_package
from mcgen.passes.pipeline import compile_spec
from mcgen.spec import Spec, load_spec, spec_hash

ROOT = Path(__file__).resolve().parents[1]
SPECS = {"delta": "grm_delta", "gated_delta": "grm_gated_delta"}
CHUNK = 64  # the specs' chunk size


def render_kernels(spec: Spec, out_dir: Path) -> Path:
    """The spec's package with the delta template rendered as its triton_recurrence.py."""
    plan = compile_spec(spec).plan
    command = f"mcgen build {spec.name}.yaml"
    package_dir = render_package(spec, plan, command=command).write(out_dir)
    context = {
        "spec": spec,
        "plan": plan,
        "spec_hash": spec_hash(spec),
        "mcgen_version": __version__,
        "command": command,
    }
    text = environment().get_template("package/triton_delta.py.jinja").render(context)
    (package_dir / "triton_recurrence.py").write_text(text, encoding="utf-8")
    return package_dir


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    """recurrence -> the rendered triton_recurrence module of its spec."""
    modules = {}

    def get(recurrence: str):
        if recurrence not in modules:
            root = tmp_path_factory.mktemp(recurrence)
            spec = load_spec(ROOT / f"specs/{SPECS[recurrence]}.yaml").spec
            package = import_package(render_kernels(spec, root))
            modules[recurrence] = importlib.import_module(package.__name__ + ".triton_recurrence")
        return modules[recurrence]

    return get


def reference(q, k, v, g, beta, h0, table, scale):
    """o [B, T, H, V], the memory before each chunk [BH, NC, V, K] and after each slotted
    chunk [BH, num_slots, V, K] of S_t = exp(g_t) S_{t-1} (I - beta_t k_t k_t^T) +
    beta_t v_t k_t^T (no exp(g_t) when g is None), o_t = scale S_t q_t, token by token."""
    batch, seq_len, heads, key_dim = q.shape
    value_dim = v.shape[-1]
    zeros = q.new_zeros(batch, heads, value_dim, key_dim)
    memory = zeros if h0 is None else h0.unflatten(0, (batch, heads))  # [B, H, V, K]
    outs, befores = {}, []
    slots = [None] * table.num_slots
    for n, (first, count) in enumerate(table.chunks):
        if table.resets[n]:
            memory = zeros
        befores.append(memory)
        for t in range(first, first + count):
            k_t, b_t = k[:, t, :, None, :], beta[:, t, :, None, None]  # [B, H, 1, K], [B, H, 1, 1]
            if g is not None:
                memory = g[:, t, :, None, None].exp() * memory
            recalled = memory @ k_t.transpose(-1, -2)  # [B, H, V, 1]
            memory = memory + b_t * (v[:, t, :, :, None] - recalled) @ k_t
            outs[t] = scale * (memory @ q[:, t, :, :, None])[..., 0]  # [B, H, V]
        if table.state_slot[n] >= 0:
            slots[table.state_slot[n]] = memory
    o = torch.stack([outs[t] for t in range(seq_len)], dim=1)
    return o, torch.stack(befores, dim=2).flatten(0, 1), torch.stack(slots, dim=2).flatten(0, 1)


class Table:
    """A chunk table as the glue makes it: chunks never longer than CHUNK, `resets` where
    the memory restarts, `state_slot` where a chunk's end memory is kept."""

    def __init__(self, chunks, resets, state_slot):
        self.chunks, self.resets, self.state_slot = chunks, resets, state_slot
        self.num_slots = max(state_slot) + 1
        self.seq_len = chunks[-1][0] + chunks[-1][1]

    def tensors(self):
        as_int = lambda x: torch.tensor(x, dtype=torch.int32)  # noqa: E731
        return as_int(self.chunks), as_int(self.resets), as_int(self.state_slot)


TABLES = {
    # one stream from h0, the last chunk short; slots at the last and the first chunk
    "stream": Table([(0, 64), (64, 64), (128, 22)], [0, 0, 0], [1, -1, 0]),
    # checkpoint segments of 40 tokens: each segment end kept, the memory carried over
    "segments": Table([(0, 40), (40, 40), (80, 40), (120, 30)], [1, 0, 0, 0], [0, 1, 2, 3]),
    # init: independent: the memory restarts at every segment
    "independent": Table([(0, 40), (40, 40), (80, 40), (120, 30)], [1, 1, 1, 1], [0, 1, 2, 3]),
    # packed sequences of 70, 50 and 3 tokens: each restarts, each one's end kept
    "packed": Table([(0, 64), (64, 6), (70, 50), (120, 3)], [1, 0, 1, 1], [-1, 0, 1, 2]),
}


def make_inputs(
    recurrence, table, *, batch=2, heads=2, key_dim=12, value_dim=20, seed=0, g_shift=1.0
):
    """fp64 inputs: unit keys (as MCLayer makes them), beta in (0, 1), g = logsigmoid(x +
    g_shift), x standard normal (a very negative g_shift: strong decay)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    seq_len = table.seq_len
    q = randn(batch, seq_len, heads, key_dim)
    k = F.normalize(randn(batch, seq_len, heads, key_dim), dim=-1)
    v = randn(batch, seq_len, heads, value_dim)
    beta = torch.sigmoid(randn(batch, seq_len, heads))
    g = None
    if recurrence == "gated_delta":
        g = F.logsigmoid(randn(batch, seq_len, heads) + g_shift)
    h0 = randn(batch * heads, value_dim, key_dim) / 4
    do = randn(batch, seq_len, heads, value_dim)
    dh_slots = randn(batch * heads, table.num_slots, value_dim, key_dim)
    return q, k, v, g, beta, h0, do, dh_slots


def rel(out, ref) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


@contextmanager
def poisoned(module):
    """Every tensor that `module` allocates (new_empty, empty_like) starts as NaN, so a slot
    that no kernel writes shows up."""
    real_new_empty, real_empty_like = torch.Tensor.new_empty, torch.empty_like

    def from_module() -> bool:
        return sys._getframe(2).f_globals.get("__name__") == module.__name__

    def new_empty(self, *size, **kwargs):
        out = real_new_empty(self, *size, **kwargs)
        return out.fill_(float("nan")) if from_module() and out.is_floating_point() else out

    def empty_like(x, **kwargs):
        out = real_empty_like(x, **kwargs)
        return out.fill_(float("nan")) if from_module() and out.is_floating_point() else out

    torch.Tensor.new_empty, torch.empty_like = new_empty, empty_like
    try:
        yield
    finally:
        torch.Tensor.new_empty, torch.empty_like = real_new_empty, real_empty_like


def check(
    kernels,
    recurrence,
    table,
    *,
    dtype=torch.float32,
    use_h0=True,
    use_dh_slots=True,
    tol=1e-5,
    **shape,
):
    module = kernels(recurrence)
    q, k, v, g, beta, h0, do, dh_slots = make_inputs(recurrence, table, **shape)
    scale = q.shape[-1] ** -0.5
    # The reference sees the inputs as the kernels do (rounded to `dtype`; gates in fp32).
    q, k, v = (x.to(dtype).double().requires_grad_() for x in (q, k, v))
    beta = beta.float().double().requires_grad_()
    h0 = h0.float().double().requires_grad_() if use_h0 else None
    g = g.float().double().requires_grad_() if g is not None else None
    o_ref, before_ref, slots_ref = reference(q, k, v, g, beta, h0, table, scale)
    loss = (o_ref * do).sum() + ((slots_ref * dh_slots).sum() if use_dh_slots else 0)
    leaves = {"q": q, "k": k, "v": v, "beta": beta, "h0": h0, "g": g}
    leaves = {name: x for name, x in leaves.items() if x is not None}
    found = torch.autograd.grad(loss, list(leaves.values()), materialize_grads=True)
    grads = dict(zip(leaves, found, strict=True))

    inputs = [q.detach().to(dtype), k.detach().to(dtype), v.detach().to(dtype)]
    inputs += [g.detach().float()] if g is not None else []
    inputs += [beta.detach().float(), h0.detach().float() if use_h0 else None]
    chunks, resets, state_slot = table.tensors()
    with poisoned(module):
        o, h_chunks, h_slots = module.recurrence_fwd(
            *inputs, chunks, resets, state_slot, table.num_slots, scale
        )
    assert o.dtype == h_slots.dtype == torch.float32 and h_chunks.dtype == dtype
    assert not o.isnan().any() and not h_chunks.isnan().any() and not h_slots.isnan().any()
    assert rel(o, o_ref) <= tol, rel(o, o_ref)
    assert rel(h_chunks, before_ref) <= tol, rel(h_chunks, before_ref)
    assert rel(h_slots, slots_ref) <= tol, rel(h_slots, slots_ref)

    with poisoned(module):
        found = module.recurrence_bwd(
            *inputs[:-1],  # no h0: h_chunks holds the memory before every chunk
            chunks,
            resets,
            h_chunks,
            do.float(),
            dh_slots.float() if use_dh_slots else None,
            state_slot,
            scale,
        )
    names = ["q", "k", "v"] + (["g"] if g is not None else []) + ["beta", "h0"]
    assert len(found) == len(names)
    for name, grad in zip(names, found, strict=True):
        assert grad.dtype == torch.float32 and not grad.isnan().any(), name
        if name == "h0" and not use_h0:
            continue  # dh0 still comes back: the gradient of the zero memory
        want = grads[name]
        if name == "h0" and table.resets[0]:
            assert not grad.any(), "dh0 after a reset at chunk 0 must be zero"
            continue
        assert rel(grad, want) <= tol, (name, rel(grad, want))


@pytest.mark.parametrize("recurrence", ["delta", "gated_delta"])
def test_fp32_stream_matches_the_token_loop(kernels, recurrence):
    check(kernels, recurrence, TABLES["stream"])


@pytest.mark.slow
@pytest.mark.parametrize("recurrence", ["delta", "gated_delta"])
@pytest.mark.parametrize("table", ["segments", "independent", "packed"])
def test_fp32_matches_the_token_loop(kernels, recurrence, table):
    check(kernels, recurrence, TABLES[table])


@pytest.mark.slow
@pytest.mark.parametrize("recurrence", ["delta", "gated_delta"])
def test_without_h0_and_injected_gradients(kernels, recurrence):
    check(kernels, recurrence, TABLES["stream"], use_h0=False, use_dh_slots=False)


def test_strong_decay_stays_finite_and_close(kernels):
    """g about -12 per token: exp(G_t - G_j) above the diagonal would overflow fp32 (masked
    before exp). The fp32 prefix sums G (down to about -500 in a 40-token chunk) carry an
    absolute error of |G| 2^-24, so the bound is looser than 1e-5: measured 3.5e-5 in the
    forward and 7e-4 in dg."""
    check(kernels, "gated_delta", TABLES["segments"], g_shift=-12.0, tol=2e-3)


@pytest.mark.slow
def test_batch_of_one_and_power_of_two_sizes(kernels):
    check(kernels, "gated_delta", TABLES["segments"], batch=1, heads=3, key_dim=32, value_dim=16)


@pytest.mark.parametrize("recurrence", ["delta", "gated_delta"])
def test_no_chunks_gives_empty_results_and_a_zero_dh0(kernels, recurrence):
    module = kernels(recurrence)
    q, k, v, g, beta, h0, do, _ = make_inputs(recurrence, TABLES["stream"])
    q, k, v, do = (x[:, :0].float() for x in (q, k, v, do))
    gates = [g[:, :0].float()] if g is not None else []
    beta, h0 = beta[:, :0].float(), h0.float()
    chunks, empty = torch.zeros(0, 2, dtype=torch.int32), torch.zeros(0, dtype=torch.int32)
    o, h_chunks, h_slots = module.recurrence_fwd(
        q, k, v, *gates, beta, h0, chunks, empty, empty, 0, 0.5
    )
    assert o.shape == (2, 0, 2, 20) and h_chunks.shape == (4, 0, 20, 12) == h_slots.shape
    grads = module.recurrence_bwd(
        q, k, v, *gates, beta, chunks, empty, h_chunks, do, None, empty, 0.5
    )
    assert [x.shape[1] for x in grads[:-1]] == [0] * (len(grads) - 1)
    assert grads[-1].shape == h0.shape and not grads[-1].any()


@pytest.mark.slow
@pytest.mark.parametrize("recurrence", ["delta", "gated_delta"])
def test_bf16_inputs_within_loose_tolerance(kernels, recurrence):
    check(kernels, recurrence, TABLES["packed"], dtype=torch.bfloat16, tol=2e-2)


# ---------------------------------------------------------------------------------------
# The chunk tables of the package's own torch backend


def layout_table(layout, seq_len: int):
    """(chunks, resets, state_slot, num_slots) for a backend_torch.ChunkLayout: slot i holds
    cached memory i (its segment's closing chunk), then each piece that ends inside a segment
    gets a slot for its final memory."""
    chunks = [(row[0], sum(t < seq_len for t in row)) for row in layout.index]
    state_slot = [-1] * len(chunks)
    closing = [n for n, closes in enumerate(layout.closes) if closes]
    for memory, n in enumerate(closing):
        state_slot[n] = memory
    num_slots = len(closing)
    for last, *_ in layout.pieces:
        if state_slot[last] < 0:
            state_slot[last] = num_slots
            num_slots += 1
    as_int = lambda x: torch.tensor(x, dtype=torch.int32)  # noqa: E731
    return as_int(chunks), as_int(layout.resets), as_int(state_slot), num_slots


def cached_reads(q, states, layout, scale):
    """[B, T, H, V]: each token's sum of scale C_i q_t over the memories its chunk sees."""
    reads = torch.zeros(*q.shape[:-1], states.shape[-2], dtype=q.dtype)
    for row, lo, hi in zip(layout.index, layout.visible_lo, layout.visible_hi, strict=True):
        tokens = [t for t in row if t < q.shape[1]]
        visible = states[:, :, lo:hi].sum(dim=2)  # [B, H, V, K]
        reads[:, tokens] = scale * torch.einsum("bhvk,bthk->bthv", visible, q[:, tokens])
    return reads


@pytest.mark.slow
@pytest.mark.parametrize("recurrence", ["delta", "gated_delta"])
@pytest.mark.parametrize("init", ["checkpoint", "independent"])
@pytest.mark.parametrize("packed", [False, True])
def test_the_torch_backends_chunk_layout_gives_its_results(tmp_path, recurrence, init, packed):
    """The table the glue will build from backend_torch.chunk_layout (chunks cut at segment
    ends, resets, segment-end slots, packed pieces) gives the torch backend's cached
    memories, final memories and online output (its residual output less the cached reads)."""
    spec = make_spec(
        recurrence=recurrence,
        init=init,
        aggregation="residual",
        segments="{kind: constant, length: 12}",
        chunk_size=8,
        key_dim=12,
        value_dim=20,
    )
    package = import_package(render_kernels(spec, tmp_path))
    module = importlib.import_module(package.__name__ + ".triton_recurrence")
    backend = importlib.import_module(package.__name__ + ".backend_torch")
    table = Table([(0, 30)], [1], [0])  # only its length and slot count matter to make_inputs
    q, k, v, g, beta, _, _, _ = make_inputs(recurrence, table, batch=1 if packed else 2)
    cu_seqlens = [0, 13, 30] if packed else None
    gates = {} if g is None else {"g": g}
    out, caches = package.mc_forward(
        q, k, v, beta=beta, **gates, backend="torch", output_cache=True, cu_seqlens=cu_seqlens
    )
    caches = caches if packed else [caches]
    # (offset, length, stream position, memories cached before), as backend_torch.forward
    ends = cu_seqlens or [0, 30]
    pieces = tuple((a, b - a, 0, 0) for a, b in zip(ends[:-1], ends[1:], strict=True))
    layout = backend.chunk_layout(pieces, 30)
    chunks, resets, state_slot, num_slots = layout_table(layout, 30)
    scale = q.shape[-1] ** -0.5
    gates32 = [] if g is None else [g.float()]
    o_on, _, h_slots = module.recurrence_fwd(
        q.float(), k.float(), v.float(), *gates32, beta.float(), None,
        chunks, resets, state_slot, num_slots, scale,
    )  # fmt: skip
    states = torch.cat([cache.states for cache in caches], dim=2)  # [B, H, N, V, K]
    assert states.shape[2] == layout.num_memories > 0
    assert rel(h_slots[:, : states.shape[2]], states.flatten(0, 1)) <= 1e-5
    for (last, *_), cache in zip(layout.pieces, caches, strict=True):
        assert rel(h_slots[:, state_slot[last]], cache.state.flatten(0, 1)) <= 1e-5
    assert rel(o_on, out - cached_reads(q, states, layout, scale)) <= 1e-5


# ---------------------------------------------------------------------------------------
# The compile gate: sm_90, K = V = 128, bf16


COMPILE_SCRIPT = """
import importlib
import json
import sys
from pathlib import Path

import torch
import triton

from mcgen.kernels.capture import Recorder, recording
from mcgen.kernels.compile import ARCHS, compile_launch, use_arch
from mcgen.packages import import_package

package_dir, recurrence = Path(sys.argv[1]), sys.argv[2]
B, T, H, K, V = (int(x) for x in sys.argv[3].split("x"))
CHUNK = 64
use_arch(ARCHS["sm_90"])
triton.knobs.runtime.interpret = False
package = import_package(package_dir)
module = importlib.import_module(package.__name__ + ".triton_recurrence")

# Never touched: the launches are recorded, not run.
q, k = torch.empty(B, T, H, K, dtype=torch.bfloat16), torch.empty(B, T, H, K, dtype=torch.bfloat16)
v = torch.empty(B, T, H, V, dtype=torch.bfloat16)
gates = [torch.empty(B, T, H)] if recurrence == "gated_delta" else []
beta, h0 = torch.empty(B, T, H), torch.empty(B * H, V, K)
NC = T // CHUNK
chunks = torch.tensor([(n * CHUNK, CHUNK) for n in range(NC)], dtype=torch.int32)
resets = torch.zeros(NC, dtype=torch.int32)
slots = NC // 4  # a segment end every 256 tokens
state_slot = torch.tensor([n // 4 if n % 4 == 3 else -1 for n in range(NC)], dtype=torch.int32)
recorder = Recorder()
with recording(recorder):
    recorder.phase = "forward"
    module.recurrence_fwd(q, k, v, *gates, beta, h0, chunks, resets, state_slot, slots, 0.1)
    recorder.phase = "backward"
    h_chunks = torch.empty(B * H, NC, V, K, dtype=torch.bfloat16)
    do, dh_slots = torch.empty(B, T, H, V), torch.empty(B * H, slots, V, K)
    module.recurrence_bwd(
        q, k, v, *gates, beta, chunks, resets, h_chunks, do, dh_slots, state_slot, 0.1
    )
results = {}
for launch in recorder.launches:
    compiled = compile_launch(launch.kernel, launch.args, launch.grid, launch.options)
    results[f"{launch.phase} {launch.name}"] = compiled.to_json()
print(json.dumps(results))
"""


@pytest.mark.slow
@pytest.mark.parametrize("recurrence", ["delta", "gated_delta"])
def test_kernels_compile_for_sm90_on_tensor_cores_without_spills(tmp_path, recurrence):
    """At K = V = 128 in bf16 (1 x 4096 tokens x 16 heads, C = 64: lengths are not
    specialised, so this is the benchmark's compile): every dot a wgmma, no spill, shared
    memory within sm_90's 227 KB."""
    spec = load_spec(ROOT / f"specs/{SPECS[recurrence]}.yaml").spec
    package_dir = render_kernels(spec, tmp_path / "package")
    script = tmp_path / "compile_delta.py"
    script.write_text(COMPILE_SCRIPT, encoding="utf-8")
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    child = subprocess.run(
        [sys.executable, str(script), str(package_dir), recurrence, "1x4096x16x128x128"],
        capture_output=True,
        text=True,
        env={**env, "TRITON_CACHE_DIR": str(tmp_path / "cache")},
        cwd=ROOT,
        timeout=900,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    results = {name: Compiled.from_json(r) for name, r in json.loads(child.stdout).items()}
    assert len(results) == 6, list(results)  # three kernels per pass
    for name, compiled in results.items():
        print(
            f"{name}: {compiled.registers} registers, {compiled.spill_stores} B spilled, "
            f"{compiled.shared} B shared, {len(compiled.dots)} dots, {compiled.seconds:.0f} s"
        )
    for name, compiled in results.items():
        assert compiled.error is None, (name, compiled.error)
        assert compiled.dots and all(d.kind == "wgmma" for d in compiled.dots), (
            name,
            compiled.dots,
        )
        assert compiled.spill_stores == 0, (name, compiled.spill_stores)
        assert compiled.shared <= ARCHS["sm_90"].shared_limit, (name, compiled.shared)
