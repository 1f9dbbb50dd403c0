"""The compiled-kernel report (mcgen inspect SPEC --kernels): its pieces, and the CI check
that grm's, ssc's and gated delta's kernels compile for sm_90 onto tensor cores without spills.

Compiling needs a process where Triton's interpreter is off (conftest turns it on for
the suite), so compiles run in child processes, as the report itself does.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mcgen.cli import app
from mcgen.kernels import DEFAULT_SHAPE, kernel_report
from mcgen.kernels import cost as cost_module
from mcgen.kernels.compile import ARCHS, Compiled, Dot, classify_dots, parse_ptxas_log
from mcgen.kernels.cost import CARDS, Cost, Problem, compute_peak, kernel_cost
from mcgen.kernels.report import build_report
from mcgen.kernels.run import build_variant, run_worker
from mcgen.passes.cost import SegmentEnds

ROOT = Path(__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


# ---------------------------------------------------------------------------------------
# How dots lower


# Lines of real ttgir (Triton 3.9, 64x64x64 dots), attributes and locations trimmed.
WGMMA_TTGIR = (
    "#mma = #ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [4, 1]}>\n"
    "    %z = ttng.warp_group_dot %x, %y, %c {inputPrecision = 0 : i32} : "
    "!ttg.memdesc<64x64xbf16, #shared, #smem> * !ttg.memdesc<64x64xbf16, #shared, #smem> "
    "-> tensor<64x64xf32, #mma> loc(#loc21)\n"
)
MMA_TTGIR = (
    "#mma = #ttg.nvidia_mma<{versionMajor = 2, versionMinor = 0, warpsPerCTA = [2, 2]}>\n"
    "    %z = tt.dot %a, %b, %c : tensor<64x64xf16, #ttg.dot_op<{opIdx = 0, parent = #mma}>> "
    "* tensor<64x64xf16, #ttg.dot_op<{opIdx = 1, parent = #mma}>> -> tensor<64x64xf32, #mma>\n"
)
FMA_TTGIR = (
    "#blocked1 = #ttg.blocked<{sizePerThread = [4, 4], threadsPerWarp = [2, 16]}>\n"
    "    %z = tt.dot %x, %y, %c : tensor<64x64xf32, #ttg.dot_op<{opIdx = 0, parent = #blocked1}>> "
    "* tensor<64x64xf32, #ttg.dot_op<{opIdx = 1, parent = #blocked1}>> "
    "-> tensor<64x64xf32, #blocked1> loc(#loc21)\n"
)


def test_classify_dots_reads_each_lowering_off_the_ttgir():
    assert classify_dots(WGMMA_TTGIR) == (Dot("wgmma", "bf16"),)
    assert classify_dots(MMA_TTGIR) == (Dot("mma", "f16"),)
    assert classify_dots(FMA_TTGIR) == (Dot("fma", "f32"),)
    assert classify_dots(WGMMA_TTGIR + FMA_TTGIR) == (Dot("wgmma", "bf16"), Dot("fma", "f32"))
    assert classify_dots("tt.func @k() {\n  tt.return\n}") == ()


TINY_KERNEL = """
import json
import sys

import torch
import triton
import triton.language as tl

from mcgen.kernels.compile import ARCHS, compile_launch, use_arch


@triton.jit
def dot_kernel(a, b, c, PRECISION: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.arange(0, BLOCK)
    tile = r[:, None] * BLOCK + r[None, :]
    tl.store(c + tile, tl.dot(tl.load(a + tile), tl.load(b + tile), input_precision=PRECISION))


results = {}
for arch, dtype, precision in json.loads(sys.argv[1]):
    use_arch(ARCHS[arch])
    x = torch.empty(64, 64, dtype=getattr(torch, dtype))
    out = torch.empty(64, 64)
    compiled = compile_launch(dot_kernel, [x, x, out, precision, 64], (1,), {"num_warps": 4})
    results[f"{arch} {dtype} {precision}"] = compiled.to_json()
print(json.dumps(results))
"""


def test_a_tiny_dot_lowers_to_wgmma_mma_or_fma_as_compiled(tmp_path: Path):
    """bf16 64x64x64 on sm_90: wgmma; on sm_80: mma.sync; fp32 "ieee": FMA (no GPU)."""
    script = tmp_path / "tiny_kernel.py"
    script.write_text(TINY_KERNEL, encoding="utf-8")
    cases = [
        ("sm_90", "bfloat16", "ieee"),
        ("sm_90", "float32", "ieee"),
        ("sm_80", "bfloat16", "ieee"),
    ]
    child = subprocess.run(
        [sys.executable, str(script), json.dumps(cases)],
        capture_output=True,
        text=True,
        env={**child_env(), "TRITON_CACHE_DIR": str(tmp_path / "cache")},
        cwd=ROOT,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    results = {k: Compiled.from_json(v) for k, v in json.loads(child.stdout).items()}
    assert results["sm_90 bfloat16 ieee"].dots == (Dot("wgmma", "bf16"),)
    assert results["sm_90 float32 ieee"].dots == (Dot("fma", "f32"),)
    assert results["sm_80 bfloat16 ieee"].dots == (Dot("mma", "bf16"),)
    for compiled in results.values():
        assert compiled.error is None
        assert compiled.registers is not None and 0 < compiled.registers <= 255
        assert compiled.spill_stores is not None and compiled.num_warps == 4
    # tensor cores hold the tile in few registers; the FMA version needs 64 x 64 per warp
    assert results["sm_90 bfloat16 ieee"].spill_stores == 0
    assert results["sm_90 bfloat16 ieee"].shared > 0  # operands staged in shared memory


# ---------------------------------------------------------------------------------------
# ptxas' report


PTXAS_LOG = """\
ptxas info    : 35 bytes gmem
ptxas info    : Compiling entry function 'spill_kernel' for 'sm_90a'
ptxas info    : Function properties for spill_kernel
    6304 bytes stack frame, 13208 bytes spill stores, 18628 bytes spill loads
ptxas info    : Used 168 registers, used 0 barriers, 6304 bytes cumulative stack size
"""


def test_parse_ptxas_log_reads_registers_and_spills():
    usage = parse_ptxas_log(PTXAS_LOG)
    assert (usage.registers, usage.stack) == (168, 6304)
    assert (usage.spill_stores, usage.spill_loads) == (13208, 18628)


def test_parse_ptxas_log_sums_spills_over_called_functions():
    helper = """\
ptxas info    : Function properties for helper
    64 bytes stack frame, 40 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 40 registers
"""
    usage = parse_ptxas_log(PTXAS_LOG + helper)
    assert (usage.registers, usage.stack) == (168, 6304)
    assert (usage.spill_stores, usage.spill_loads) == (13248, 18636)


def test_parse_ptxas_log_without_a_report_gives_nothing():
    usage = parse_ptxas_log("")
    assert usage.registers is None and usage.spill_stores is None


# ---------------------------------------------------------------------------------------
# Costs


def problem(seq_len=1024, segment=256, chunk=64, top_k=None, batch=2, heads=3, k=32, v=16):
    return Problem(
        batch=batch,
        seq_len=seq_len,
        heads=heads,
        key_dim=k,
        value_dim=v,
        chunk=chunk,
        ends=SegmentEnds.of("constant", segment, None, seq_len),
        top_k=top_k,
    )


def test_block_pairs_counts_the_memories_each_block_loads():
    """Brute force: a block of rows loads every memory its last row can read (at most
    top_k per row)."""
    for top_k in (None, 2):
        p = problem(seq_len=1000, segment=96, top_k=top_k)
        for block in (64, 128):
            pairs = 0
            for start in range(0, p.seq_len, block):
                last = min(start + block, p.seq_len) - 1
                visible = sum(1 for e in range(96, p.seq_len, 96) if e <= last)
                rows = min(start + block, p.seq_len) - start
                pairs += visible if top_k is None else min(visible, top_k * rows)
            assert p.block_pairs(block) == p.batch * p.heads * pairs, (top_k, block)


def launch(kernel: str, tensors: dict[str, tuple[tuple[int, ...], int]], **constexprs) -> dict:
    return {
        "kernel": kernel,
        "grid": [1],
        "constexprs": constexprs,
        "tensors": {n: {"shape": list(s), "itemsize": size} for n, (s, size) in tensors.items()},
    }


def test_state_fwd_cost_is_one_state_sized_dot_per_token_and_the_tensors_once():
    p = problem()
    recorded = launch(
        "_state_fwd_kernel", {"k": ((6, 16, 64, 32), 2), "h_out": ((6, 16, 32, 16), 4)}
    )
    cost = kernel_cost("_state_fwd_kernel", p, recorded)
    assert cost == Cost(2 * 2 * 1024 * 3 * 32 * 16, 6 * 16 * 64 * 32 * 2 + 6 * 16 * 32 * 16 * 4)


def test_cached_read_cost_reads_each_state_once_per_block_that_sees_it(monkeypatch):
    """DRAM bytes: a head's states once while they fit in L2, else once per block."""
    p = problem()
    tensors = {"q": ((6, 1024, 32), 2), "states": ((6, 4, 16, 32), 2)}
    pairs = p.block_pairs(128)
    fits = kernel_cost("_read_state_fwd_kernel", p, launch("x", tensors, BT=128))
    assert fits.bytes == 6 * 1024 * 32 * 2 + 6 * 4 * 16 * 32 * 2
    assert fits.flops == pairs * 128 * (2 * 32 * 16 + 2 * 32)
    monkeypatch.setattr(cost_module, "L2_RESIDENT_BYTES", 0)
    spills = kernel_cost("_read_state_fwd_kernel", p, launch("x", tensors, BT=128))
    assert spills.bytes == 6 * 1024 * 32 * 2 + pairs * 32 * 16 * 2
    assert spills.flops == fits.flops


def test_attention_read_cost_counts_every_key_up_to_the_last_segment_end(monkeypatch):
    """Brute force over the tokens: token t reads every key before the last end <= t, and
    the gate of every memory it sees. DRAM bytes: k and v once while a head's fit in L2,
    else once per query chunk that reads them."""
    p = problem(seq_len=1000, segment=96)
    ends = range(96, p.seq_len, 96)
    keys = sum(max((e for e in ends if e <= t), default=0) for t in range(p.seq_len))
    visible = sum(sum(1 for e in ends if e <= t) for t in range(p.seq_len))
    assert p.key_pairs == p.batch * p.heads * keys
    assert p.visible_pairs == p.batch * p.heads * visible
    tensors = {"q": ((6, 16, 64, 32), 2), "k": ((6, 16, 64, 32), 2), "v": ((6, 16, 64, 16), 2)}
    fits = kernel_cost("_read_attention_fwd_kernel", p, launch("x", tensors, C=64))
    assert fits.flops == p.key_pairs * 2 * (32 + 16) + p.visible_pairs * 2 * 32
    assert fits.bytes == 6 * 16 * 64 * (32 + 32 + 16) * 2
    monkeypatch.setattr(cost_module, "L2_RESIDENT_BYTES", 0)
    spills = kernel_cost("_read_attention_fwd_kernel", p, launch("x", tensors, C=64))
    assert spills.bytes == 6 * 16 * 64 * 32 * 2 + p.key_pairs // 64 * (32 + 16) * 2
    assert spills.flops == fits.flops


def test_grouped_read_cost_counts_each_chosen_pair_and_gathers_rows_from_l2(monkeypatch):
    """ssc's sparse read: 2KV per (token, chosen memory) pair (brute force: min(visible,
    top_k) per token); the gathered query rows once from DRAM while a head's rows fit in L2,
    else once per pair."""
    p = problem(seq_len=1000, segment=96, top_k=2)
    visible = [sum(1 for e in range(96, 1000, 96) if e <= t) for t in range(1000)]
    pairs = p.batch * p.heads * sum(min(v, 2) for v in visible)
    tensors = {"q": ((6, 1000, 32), 2), "states": ((6, 10, 16, 32), 2), "reads": ((pairs, 16), 4)}
    others = 6 * 10 * 16 * 32 * 2 + pairs * 16 * 4
    fits = kernel_cost("_grouped_read_fwd_kernel", p, launch("x", tensors))
    assert fits == Cost(pairs * 2 * 32 * 16, 6 * 1000 * 32 * 2 + others)
    monkeypatch.setattr(cost_module, "L2_RESIDENT_BYTES", 0)
    spills = kernel_cost("_grouped_read_fwd_kernel", p, launch("x", tensors))
    assert spills == Cost(fits.flops, pairs * 32 * 2 + others)
    route = kernel_cost("_route_kernel", p, launch("x", {"conn": ((6, 1000, 32), 2)}))
    assert route == Cost(2 * 32 * p.batch * p.heads * sum(visible), 6 * 1000 * 32 * 2)


def test_unknown_kernels_and_changed_arguments_have_no_cost():
    p = problem()
    assert kernel_cost("_a_kernel_nobody_wrote", p, launch("x", {})) is None
    # the formula reads the tile BT and the states: a rewritten kernel without them
    assert kernel_cost("_read_state_fwd_kernel", p, launch("x", {"q": ((1,), 2)})) is None


def test_the_slowest_dot_path_sets_the_peak():
    h100 = CARDS["h100"]
    assert compute_peak(h100, [("wgmma", "bf16")]) == h100.tensor_16bit
    assert compute_peak(h100, [("wgmma", "bf16"), ("wgmma", "f32")]) == h100.tensor_tf32
    assert compute_peak(h100, [("wgmma", "bf16"), ("fma", "f32")]) == h100.fp32
    assert compute_peak(h100, []) == h100.fp32


# ---------------------------------------------------------------------------------------
# Report and check


def captured_event(launches: list[dict]) -> dict:
    return {"seconds": 1.0, "compiles": len({x["compile"] for x in launches}), "launches": launches}


def recorded(kernel, compile_index, phase="forward", call=0, config=0, configs=1):
    return {
        "module": "triton_recurrence",
        "kernel": kernel,
        "phase": phase,
        "call": call,
        "config": config,
        "configs": configs,
        "grid": [4, 2],
        "options": {},
        "constexprs": {"BK": 64, "BV": 64, "C": 64, "USE_H0": True, "DOT": "ieee"},
        "tensors": {"k": {"shape": [6, 1024, 32], "itemsize": 2}},
        "scalars": {"NC": 16},
        "compile": compile_index,
    }


def compiled(dots=(Dot("wgmma", "bf16"),), spills=0, shared=1024):
    return Compiled(
        seconds=0.5, num_warps=4, num_stages=3, registers=128, spill_stores=spills,
        spill_loads=spills, stack=spills, shared=shared, dots=dots,
    )  # fmt: skip


def report_of(launches, results, dtype="bfloat16"):
    return build_report(
        spec="grm",
        arch=ARCHS["sm_90"],
        card=CARDS["h100"],
        shape=(2, 1024, 3, 32, 16),
        dtype=dtype,
        problem=problem(),
        captured=captured_event(launches),
        results=results,
    )


def test_the_check_names_fma_dots_spills_shared_memory_and_compile_errors():
    launches = [
        recorded("_state_fwd_kernel", 0),
        recorded("_output_fwd_kernel", 1, call=1),
        recorded("_state_bwd_kernel", 2, phase="backward", call=2),
        recorded("_chunk_bwd_kernel", 3, phase="backward", call=3),
        recorded("_read_state_fwd_kernel", 4, call=4),
    ]
    results = {
        0: compiled(),
        1: compiled(dots=(Dot("wgmma", "bf16"), Dot("fma", "f32"))),
        2: compiled(spills=513),
        3: compiled(shared=ARCHS["sm_90"].shared_limit + 1),
        4: Compiled(seconds=1.0, error="CompilationError: out of resources"),
    }
    problems = report_of(launches, results).problems()
    assert len(problems) == 4
    assert "_output_fwd_kernel (forward): 1 of 2 dots on FMA (f32 operands)" in problems[0]
    assert "_state_bwd_kernel (backward): 513 bytes of spill stores > 512" in problems[1]
    assert f"{ARCHS['sm_90'].shared_limit + 1} bytes of shared memory" in problems[2]
    assert "_read_state_fwd_kernel (forward): does not compile: CompilationError" in problems[3]
    # fp32 runs keep "ieee" FMA dots on purpose: not a finding there
    fp32 = report_of(launches[:2], {0: results[0], 1: results[1]}, dtype="float32")
    assert fp32.problems() == []


def test_rows_and_totals_count_an_autotuned_call_once():
    launches = [
        recorded("_state_fwd_kernel", 0, call=0, config=0, configs=2),
        recorded("_state_fwd_kernel", 1, call=0, config=1, configs=2),
        recorded("_state_bwd_kernel", 2, phase="backward", call=1),
        recorded("_new_kernel", 3, phase="backward", call=2),
    ]
    fast, slow = compiled(), compiled(dots=(Dot("fma", "f32"),))
    report = report_of(launches, {0: slow, 1: fast, 2: fast, 3: fast})
    assert [row.label for row in report.rows] == [
        "triton_recurrence._state_fwd_kernel [config 1/2]",
        "triton_recurrence._state_fwd_kernel [config 2/2]",
        "triton_recurrence._state_bwd_kernel",
        "triton_recurrence._new_kernel",
    ]
    assert report.rows[0].tiles == {"BK": 64, "BV": 64}
    assert report.rows[3].cost is None
    forward, both = report.totals
    one_call = kernel_cost("_state_fwd_kernel", problem(), launches[0])
    assert forward.cost == one_call and forward.unknown == 0
    assert forward.roofline == min(report.rows[0].roofline, report.rows[1].roofline)
    assert both.cost.flops == 2 * one_call.flops  # state_bwd costs what state_fwd does here
    assert both.unknown == 1
    document = json.loads(json.dumps(report.to_json()))
    assert document["kernels"][2]["dot_counts"] == {"wgmma": 1}
    assert document["totals"][1]["calls_without_cost"] == 1


# ---------------------------------------------------------------------------------------
# Capture through the real launch path


def test_capture_records_real_launches_of_forward_and_backward(tmp_path: Path):
    """The package's own mc_forward and backward, at a real shape, kernels never run."""
    shape = (1, 600, 2, 32, 16)
    _, plan, package_dir = build_variant(ROOT / "specs/grm.yaml", shape, tmp_path)
    job = {
        "package": str(package_dir),
        "shape": list(shape),
        "dtype": "bfloat16",
        "arch": "sm_90",
        "compile": False,
    }
    captured, _ = run_worker(job, tmp_path, None)
    launches = captured["launches"]
    assert {x["phase"] for x in launches} == {"forward", "backward"}
    modules = {x["module"] for x in launches}
    assert modules == {"triton_recurrence", "triton_key_sums", "triton_read_state"}
    for x in launches:
        assert x["grid"] and all(isinstance(g, int) and g >= 1 for g in x["grid"])
        assert x["tensors"], x["kernel"]
    dims = {d for x in launches for t in x["tensors"].values() for d in t["shape"]}
    assert {32, 16} <= dims  # K and V of the shape, not the spec's 64
    dtypes = {t["dtype"] for x in launches for t in x["tensors"].values()}
    assert "bfloat16" in dtypes
    assert captured["compiles"] <= len(launches)


def test_capture_records_ssc_sparse_read_with_a_cost_for_every_kernel(tmp_path: Path):
    """ssc reads through triton_read_sparse; every kernel it launches has a cost formula."""
    shape = (1, 600, 2, 32, 16)
    _, plan, package_dir = build_variant(ROOT / "specs/ssc.yaml", shape, tmp_path)
    job = {
        "package": str(package_dir),
        "shape": list(shape),
        "dtype": "bfloat16",
        "arch": "sm_90",
        "compile": False,
    }
    captured, _ = run_worker(job, tmp_path, None)
    launches = captured["launches"]
    modules = {x["module"] for x in launches}
    assert modules == {"triton_recurrence", "triton_key_sums", "triton_read_sparse"}
    sparse = {x["kernel"] for x in launches if x["module"] == "triton_read_sparse"}
    assert sparse == {
        "_route_kernel",
        "_grouped_read_fwd_kernel",
        "_mix_fwd_kernel",
        "_grouped_read_bwd_kernel",
        "_mix_bwd_kernel",
        "_memory_bwd_kernel",
    }
    p = Problem.of(plan, shape)
    assert all(kernel_cost(x["kernel"], p, x) is not None for x in launches)


def test_a_stand_in_specialises_like_its_tensor():
    """Compiles use stand-ins for the tensors: same dtype, same alignment (16-byte or not)."""
    import torch
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    from mcgen.kernels.capture import TensorArg

    base = torch.empty(64, dtype=torch.bfloat16)
    for tensor in (base, base[1:], base.view(8, 8)[:, :4]):
        real = native_specialize_impl(BaseBackend, tensor, False, True, True)
        stand_in = native_specialize_impl(BaseBackend, TensorArg.of(tensor), False, True, True)
        assert stand_in == real


# ---------------------------------------------------------------------------------------
# The command line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kernels", "--shape", "1x2x3"], "--shape must be BxTxHxKxV"),
        (["--kernels", "--shape", "1x0x1x8x8"], "got '1x0x1x8x8'"),
        (["--kernels", "--arch", "sm_75"], "--arch must be sm_90 or sm_80, got 'sm_75'"),
        (["--kernels", "--dtype", "float64"], "--dtype must be bfloat16 or float16 or float32"),
        (["--kernels", "--card", "v100"], "--card must be h100 or h200 or a100, got 'v100'"),
        (["--arch", "sm_80"], "apply with --kernels only"),
    ],
)
def test_bad_kernel_options_are_one_line_errors(args, message):
    result = CliRunner().invoke(app, ["inspect", str(ROOT / "specs/grm.yaml"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.mark.slow
def test_inspect_kernels_json_reports_every_kernel_and_exits_by_the_check(tmp_path: Path):
    args = ["inspect", str(ROOT / "specs/grm.yaml"), "--kernels", "--shape", "1x512x1x32x32"]
    result = CliRunner().invoke(app, [*args, "--dtype", "float32", "--json"])
    document = json.loads(result.stdout)
    assert result.exit_code == (1 if document["problems"] else 0), document["problems"]
    assert document["arch"] == "sm_90" and document["card"] == "H100 SXM"
    assert document["shape"] == [1, 512, 1, 32, 32] and document["dtype"] == "float32"
    kernels = document["kernels"]
    # one compile may serve both passes (the backward recomputing forward states)
    assert {phase for k in kernels for phase in k["phase"].split(", ")} == {"forward", "backward"}
    assert all(k["registers"] and k["error"] is None for k in kernels)
    assert [t["label"] for t in document["totals"]] == ["forward", "forward+backward"]


def test_a_spec_without_triton_kernels_is_refused():
    result = CliRunner().invoke(app, ["inspect", str(ROOT / "specs/titans_grm.yaml"), "--kernels"])
    assert result.exit_code == 2, result.output
    assert "has no Triton kernels (titans memory)" in result.output


# ---------------------------------------------------------------------------------------
# The CI check


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["grm", "ssc", "grm_gated_delta"])
def test_kernels_compile_for_sm90_on_tensor_cores_without_spills(spec: str):
    """At the benchmark shape in bf16: every dot on tensor cores, no spill (the check
    itself lets 512 bytes pass, for other shapes and cards), shared memory within sm_90's
    227 KB, every kernel compiled."""
    assert DEFAULT_SHAPE == (1, 32768, 16, 128, 128)
    report = kernel_report(ROOT / f"specs/{spec}.yaml", arch="sm_90", dtype="bfloat16")
    assert report.rows, "no kernel was launched"
    problems = report.problems(max_spill=0)
    assert not problems, f"{spec}'s kernels fail the sm_90 compile check:\n" + "\n".join(problems)
    assert math.isfinite(report.totals[1].roofline)


@pytest.mark.slow
def test_attention_form_kernels_compile_for_sm90_on_tensor_cores_without_spills(tmp_path: Path):
    """The attention form (chosen for segments shorter than about V / 2 tokens) passes the
    same check, at segments of 32 tokens, and every kernel it launches has a cost."""
    text = (ROOT / "specs/grm.yaml").read_text().replace("length: 256", "length: 32")
    spec = tmp_path / "grm_attention.yaml"
    spec.write_text(text + "compute:\n  read_form: attention\n")
    report = kernel_report(spec, arch="sm_90", dtype="bfloat16")
    assert any("read_attention" in row.kernel for row in report.rows), "no attention kernel ran"
    problems = report.problems(max_spill=0)
    assert not problems, "the attention form fails the sm_90 compile check:\n" + "\n".join(problems)
    assert all(row.cost is not None for row in report.rows), "a kernel without a cost formula"
