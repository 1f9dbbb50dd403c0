"""`mcgen bench` on CPU at tiny shapes: the naive provider, validation before timing (a
provider that disagrees is refused and never timed), the result files and the command.
No assertion here is about how fast anything is."""

from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

import pytest
import torch
from spec_helpers import spec_text
from typer.testing import CliRunner

from mcgen.bench import harness, providers, results
from mcgen.bench.check import evaluate, rel_error
from mcgen.bench.harness import BenchConfig, BenchError, check_len, run_bench
from mcgen.bench.providers import Provider, naive_linear_mc
from mcgen.bench.timing import peak_memory, time_call
from mcgen.bench.variants import Target, build_target
from mcgen.cli import app
from mcgen.passes.pipeline import compile_spec
from mcgen.spec import parse_spec

PNG = b"\x89PNG\r\n\x1a\n"
# Timing knobs for tests: one call each, no warm-up, one thread (this CPU may be shared).
FAST = {"warmup": 0, "repeats": 1, "min_time_s": 0.0, "threads": 1}


def write_spec(folder: Path, name: str = "tiny_grm", **fields) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(spec_text(name=name, **fields))
    return path


def fast_config(spec: Path, **fields) -> BenchConfig:
    defaults = {"device": "cpu", "seq_lens": (16, 32), "tokens": 32, **FAST}
    return BenchConfig(specs=(spec,), **(defaults | fields))


# --- the naive provider ------------------------------------------------------------------

NAIVE_CASES = [
    ("grm", "checkpoint", ""),
    ("grm", "independent", ", pool: sum, connector: query"),
    ("soup", "checkpoint", ""),
    ("ssc", "checkpoint", ", top_k: 2"),
    ("ssc", "independent", ", top_k: 1, pool: sum"),
    ("residual", "checkpoint", ""),
    ("residual", "independent", ""),
    ("none", "checkpoint", ""),
]


@pytest.mark.parametrize(("aggregation", "init", "extra"), NAIVE_CASES)
def test_naive_matches_the_reference(build_tiny, aggregation, init, extra):
    """Outputs and gradients in fp64 at T = 29 (three segments of 8 and part of a fourth)."""
    package = build_tiny(aggregation=aggregation, init=init, aggregation_extra=extra)
    spec = package.SPEC
    agg = spec["aggregation"]
    selftest = importlib.import_module(f"{package.__name__}.selftest")
    inputs = selftest.make_inputs(2, 29, 2, 8, 8, dtype=torch.float64)

    def naive(x):
        return naive_linear_mc(
            x["q"],
            x["k"],
            x["v"],
            x.get("u"),
            segment_length=spec["cache"]["segments"]["length"],
            init=init,
            aggregation=aggregation,
            pool=agg["pool"],
            connector=agg["connector"],
            gate_scale=agg["gate_scale"],
            top_k=agg["top_k"],
        )

    got = evaluate(naive, inputs, grads=True)
    want = evaluate(lambda x: package.reference(**x), inputs, grads=True)
    assert rel_error(got.output, want.output) < 1e-12
    assert got.grads is not None and want.grads is not None
    for g, w in zip(got.grads, want.grads, strict=True):
        assert rel_error(g, w) < 1e-12


def test_naive_is_skipped_for_recurrences_it_does_not_write(build_tiny):
    package = build_tiny(recurrence="decay")
    spec = parse_spec(spec_text(recurrence="decay"))
    made = providers.make_provider("naive", Target(Path("x.yaml"), spec, package, None), "cpu")
    assert isinstance(made, providers.Unavailable)
    assert "linear recurrence only" in made.reason


# --- the harness -------------------------------------------------------------------------


def test_harness_checkpoints_every_row_so_a_stopped_sweep_keeps_them(tmp_path):
    spec = write_spec(tmp_path)
    config = fast_config(spec, providers=("generated-torch",))
    seen: list[int] = []

    def checkpoint(partial):
        seen.append(len(partial.rows))
        partial.write(tmp_path / "out", "partial", plot=False)
        on_disk = (tmp_path / "out" / "partial.csv").read_text().strip().splitlines()
        assert len(on_disk) == 1 + len(partial.rows)  # header + every row so far

    result = run_bench(config, checkpoint=checkpoint)
    assert seen == list(range(1, len(result.rows) + 1))
    assert len(result.rows) == 4  # 2 T x 2 modes


def test_harness_writes_csv_json_and_png(tmp_path):
    spec = write_spec(tmp_path)
    config = fast_config(
        spec, providers=("generated-torch", "naive", "sdpa"), segment_lengths=(8, 16)
    )
    steps: list[str] = []
    totals: list[int] = []
    threads_before = torch.get_num_threads()

    def progress(description: str, total: int):
        totals.append(total)
        return steps.append

    result = run_bench(config, progress=progress)
    rows = result.rows
    assert all(r["status"] == "ok" for r in rows), [r["reason"] for r in rows]
    # One progress step per provider check (2 x 2 spec providers, sdpa once) and per row.
    assert totals == [len(steps)] == [5 + len(rows)]
    # 2 segment lengths x 2 T x 2 modes for each of the spec's providers; the baseline
    # does not depend on the segment length and is timed once per T and mode.
    count = {p: sum(r["provider"] == p for r in rows) for p in ("generated-torch", "naive", "sdpa")}
    assert count == {"generated-torch": 8, "naive": 8, "sdpa": 4}
    assert {r["segment_length"] for r in rows if r["provider"] == "naive"} == {8, 16}
    assert {(r["batch"], r["seq_len"]) for r in rows} == {(2, 16), (1, 32)}
    for row in rows:
        assert row["time_ms"] > 0 and row["flops"] > 0 and row["tflops"] > 0
        assert row["peak_bytes"] > 0
        assert row["check_error"] <= row["check_tolerance"] == 1e-5
        if row["mode"] == "fwd+bwd":
            assert row["check_grad_error"] <= 2 * row["check_tolerance"]
    naive = [r for r in rows if r["provider"] == "naive"]
    assert all(r["bench_check_error"] <= r["bench_check_tolerance"] for r in naive)

    # FLOPs come from the cost model: forward, and 3x forward with the backward pass.
    row = next(r for r in naive if r["segment_length"] == 8 and r["seq_len"] == 32)
    target = build_target(spec, tmp_path / "again", segment_length=8)
    forward = compile_spec(target.spec, 32).after.graph["cost"]["flops"] * row["batch"]
    assert row["flops"] == pytest.approx(forward * (3 if row["mode"] == "fwd+bwd" else 1))

    paths = result.write(tmp_path / "out", "cpu_bench")
    names = {p.name for p in paths.values()}
    assert names == {
        "cpu_bench.csv",
        "cpu_bench.json",
        "cpu_bench.png",
        "cpu_bench_segments.png",
        "cpu_bench_speedups.md",  # SDPA ran: the speedups over it, over T and over C
    }
    speedups = (tmp_path / "out" / "cpu_bench_speedups.md").read_text()
    assert "## Over T" in speedups and "## Over segment length" in speedups
    with paths["csv"].open() as handle:
        table = list(csv.DictReader(handle))
    assert tuple(table[0]) == results.FIELDS
    assert len(table) == len(rows)
    assert {r["device"] for r in table} == {results.cpu_name()}
    assert {r["torch"] for r in table} == {torch.__version__}
    assert all(float(r["time_ms"]) > 0 for r in table)
    document = json.loads(paths["json"].read_text())
    assert set(document) == {"environment", "config", "rows"}
    assert document["environment"]["device_type"] == "cpu"
    assert document["environment"]["python"] and document["environment"]["threads"] == 1
    assert torch.get_num_threads() == threads_before  # the run put torch's threads back
    assert document["config"]["segment_lengths"] == [8, 16]
    assert [r["time_ms"] for r in document["rows"]] == [r["time_ms"] for r in rows]
    assert all(r["device"] == results.cpu_name() for r in document["rows"])
    for key in ("png", "segments_png"):
        png = paths[key].read_bytes()
        assert png.startswith(PNG) and len(png) > 5000


def wrong_provider(calls: list[int], *, scale_out=1.0, scale_grad=1.0, from_len=0):
    """A factory: the generated torch backend, its output (past `from_len` tokens) scaled
    by scale_out, its gradients by scale_grad; `calls` counts its forward calls."""

    def factory(target, device):
        real = providers.generated(target, "torch", device)
        assert isinstance(real, Provider)

        def forward(x):
            calls.append(1)
            out = real.forward(x)
            if x["q"].shape[1] >= from_len:
                out = out * scale_out
            return out.detach() + (out - out.detach()) * scale_grad

        return Provider("wrong", forward, real.reference, real.flops, baseline=False)

    return factory


def test_a_provider_that_disagrees_is_refused_and_never_timed(tmp_path, monkeypatch):
    calls: list[int] = []
    monkeypatch.setitem(providers.PROVIDERS, "wrong", wrong_provider(calls, scale_out=1.01))
    config = fast_config(write_spec(tmp_path), providers=("generated-torch", "wrong"))
    rows = run_bench(config).rows
    wrong = [r for r in rows if r["provider"] == "wrong"]
    assert len(wrong) == 4  # 2 T x 2 modes, all reported
    for row in wrong:
        assert row["status"] == "refused"
        assert "output disagrees with the fp64 reference" in row["reason"]
        assert row["time_ms"] is None and row["peak_bytes"] is None
        assert row["check_error"] > row["check_tolerance"]
    assert len(calls) == 1  # the small-shape check only: never timed
    assert all(r["status"] == "ok" for r in rows if r["provider"] == "generated-torch")


def test_wrong_gradients_refuse_fwd_bwd_only(tmp_path, monkeypatch):
    calls: list[int] = []
    monkeypatch.setitem(providers.PROVIDERS, "wrong", wrong_provider(calls, scale_grad=2.0))
    config = fast_config(write_spec(tmp_path), providers=("wrong",), seq_lens=(32,))
    rows = {r["mode"]: r for r in run_bench(config).rows}
    assert rows["fwd"]["status"] == "ok" and rows["fwd"]["time_ms"] > 0
    assert rows["fwd+bwd"]["status"] == "refused"
    assert "gradients disagree" in rows["fwd+bwd"]["reason"]
    assert rows["fwd+bwd"]["time_ms"] is None


def test_disagreeing_at_the_bench_shape_is_refused_there(tmp_path, monkeypatch):
    """Right at the small check's 31 tokens, wrong from 32: refused at T = 32 only."""
    calls: list[int] = []
    factory = wrong_provider(calls, scale_out=1.5, from_len=32)
    monkeypatch.setitem(providers.PROVIDERS, "wrong", factory)
    config = fast_config(write_spec(tmp_path), providers=("wrong",), seq_lens=(16, 32))
    rows = run_bench(config).rows
    assert {r["status"] for r in rows if r["seq_len"] == 16} == {"ok"}
    late = [r for r in rows if r["seq_len"] == 32]
    assert {r["status"] for r in late} == {"refused"}
    assert all("disagrees with generated-torch at B=1 T=32" in r["reason"] for r in late)
    assert all(r["bench_check_error"] > r["bench_check_tolerance"] for r in late)


def test_unavailable_providers_are_skipped_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    config = fast_config(
        write_spec(tmp_path), providers=("generated-triton", "fla"), seq_lens=(32,), modes=("fwd",)
    )
    rows = {r["provider"]: r for r in run_bench(config).rows}
    assert rows["generated-triton"]["status"] == "skipped"
    assert "TRITON_INTERPRET" in rows["generated-triton"]["reason"]
    assert rows["fla"]["status"] == "skipped"
    assert "flash-linear-attention" in rows["fla"]["reason"]
    assert rows["fla"]["spec"] is None  # a baseline: not tied to the spec


def test_fla_gated_delta_runs_for_gated_delta_targets_only(tmp_path):
    cpu = torch.device("cpu")
    linear = build_target(write_spec(tmp_path, "tiny_linear"), tmp_path / "out")
    refused = providers.make_provider("fla-gated-delta", linear, cpu)
    assert isinstance(refused, providers.Unavailable) and "gated_delta" in refused.reason
    gated_spec = write_spec(tmp_path, "tiny_gd", recurrence="gated_delta")
    gated = build_target(gated_spec, tmp_path / "out")
    found = providers.make_provider("fla-gated-delta", gated, cpu)
    assert isinstance(found, providers.Unavailable)  # fla needs CUDA (or is not installed)


def test_the_gated_delta_reference_is_the_spec_without_caches(tmp_path):
    """fla-gated-delta's fp64 truth equals mcgen's own reference of a gated_delta memory
    with nothing cached (aggregation none)."""
    spec = write_spec(
        tmp_path, "tiny_gd", recurrence="gated_delta", aggregation="none", segments="{kind: none}"
    )
    target = build_target(spec, tmp_path / "out")
    inputs = target.selftest.make_inputs(2, 19, 2, 8, 6, dtype=torch.float64)
    expected = target.package.reference(**inputs)
    assert rel_error(providers.gated_delta_reference(inputs), expected) <= 1e-12


@pytest.mark.slow
def test_generated_triton_is_checked_and_timed_under_the_interpreter(tmp_path, monkeypatch):
    """The Triton provider on CPU (TRITON_INTERPRET=1, set by conftest): checked against
    the reference at the small shape and against generated-torch at the bench shape."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    spec = write_spec(tmp_path, segments="{kind: constant, length: 16}", key_dim=16, value_dim=16)
    config = fast_config(
        spec, providers=("generated-triton",), seq_lens=(32,), tokens=32, modes=("fwd",)
    )
    (row,) = run_bench(config).rows
    assert row["provider"] == "generated-triton"
    assert row["status"] == "ok", row["reason"]
    assert row["check_error"] <= row["check_tolerance"]
    assert row["bench_check_error"] <= row["bench_check_tolerance"]
    assert row["time_ms"] > 0


def test_defaults_and_bad_configurations(tmp_path):
    spec = write_spec(tmp_path)
    cpu = BenchConfig(specs=(spec,), device="cpu").resolved()
    assert cpu.dtype == "fp32" and cpu.tokens == 2048 and max(cpu.seq_lens) <= cpu.tokens
    assert cpu.providers == ("generated-torch", "naive", "sdpa")
    # docs/performance.md's GPU shape.
    assert harness.GPU_DEFAULTS["tokens"] == 32768
    assert harness.GPU_DEFAULTS["seq_lens"][0] == 2048
    assert harness.GPU_DEFAULTS["seq_lens"][-1] == 32768
    assert (harness.GPU_DEFAULTS["heads"], harness.GPU_DEFAULTS["key_dim"]) == (16, 128)
    assert harness.GPU_DEFAULTS["dtype"] == "bf16"
    with pytest.raises(BenchError, match="unknown provider nope"):
        BenchConfig(specs=(spec,), device="cpu", providers=("nope",)).resolved()
    with pytest.raises(BenchError, match="exceeds --tokens"):
        BenchConfig(specs=(spec,), device="cpu", seq_lens=(64,), tokens=32).resolved()
    # A zero is given, not "use the default": it is refused like any other non-positive size.
    for field, flag in (("tokens", "tokens"), ("heads", "heads"), ("key_dim", "key-dim")):
        with pytest.raises(BenchError, match=f"--{flag} must be positive, got 0"):
            BenchConfig(specs=(spec,), device="cpu", **{field: 0}).resolved()
    if not torch.cuda.is_available():
        with pytest.raises(BenchError, match="no CUDA"):
            BenchConfig(specs=(spec,), device="cuda").resolved()
    explicit = write_spec(tmp_path, "tiny_explicit", segments="{kind: explicit, boundaries: [8]}")
    with pytest.raises(BenchError, match="no length to sweep"):
        run_bench(fast_config(explicit, segment_lengths=(4,)))


def test_check_length_covers_top_k_plus_two_segments(tmp_path):
    grm = build_target(write_spec(tmp_path), tmp_path / "w")
    ssc = build_target(
        write_spec(tmp_path, "tiny_ssc", aggregation="ssc", aggregation_extra=", top_k: 3"),
        tmp_path / "w",
    )
    assert check_len(grm, 8192) == 3 * 8 + 4 + 3
    assert check_len(ssc, 8192) == 5 * 8 + 4 + 3
    assert check_len(ssc, 20) == 20


@pytest.mark.parametrize(
    ("segments", "expected"),
    [
        ("{kind: logarithmic, length: 4}", 16 + 2 + 3),  # ends 4, 8, 16
        ("{kind: explicit, boundaries: [5, 11]}", 11 + 2 + 3),  # both, then part of a third
        ("{kind: none}", 2 * 4 + 2 + 3),  # two chunks and part of a third
    ],
)
def test_check_length_follows_each_segmentation(tmp_path, segments: str, expected: int):
    spec = write_spec(tmp_path, "tiny_seg", segments=segments, chunk_size=4)
    assert check_len(build_target(spec, tmp_path / "w"), 8192) == expected


def test_cpu_timer_and_peak_memory():
    cpu = torch.device("cpu")
    timing = time_call(lambda: torch.ones(256, 256).sum(), cpu, warmup=1, repeats=3, min_time_s=0)
    assert timing.median_ms > 0 and timing.calls == 3
    peak, how = peak_memory(lambda: torch.ones(1 << 20), cpu)  # 4 MiB of fp32
    assert peak >= 4 << 20 and "profiler" in how


# --- the command -------------------------------------------------------------------------


def test_cli_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_spec(tmp_path)
    args = ["bench", "tiny_grm.yaml", "--provider", "generated-torch", "--provider", "naive"]
    args += ["--seq-len", "16", "--tokens", "32", "--mode", "fwd", "--out", "res", "--threads", "1"]
    done = CliRunner().invoke(app, [*args, "--provider", "sdpa", "--name", "b"])
    assert done.exit_code == 0, done.output
    assert "generated-torch" in done.output and "naive" in done.output
    assert results.cpu_name() in done.output
    assert all((tmp_path / "res" / f"b.{ext}").is_file() for ext in ("csv", "json", "png"))
    # With SDPA timed: the speedups over it, one line per spec provider and mode.
    speedups = (tmp_path / "res" / "b_speedups.md").read_text()
    assert "| tiny_grm | C=8 | generated-torch | fwd | " in speedups
    assert "| tiny_grm | C=8 | naive | fwd | " in speedups

    done = CliRunner().invoke(app, [*args, "--name", "j", "--json", "--no-plot"])
    assert done.exit_code == 0, done.output
    document = json.loads(done.stdout)
    assert {r["provider"] for r in document["rows"]} == {"generated-torch", "naive"}
    assert all(r["status"] == "ok" and r["time_ms"] > 0 for r in document["rows"])
    assert set(document["files"]) == {"csv", "json"}
    assert not (tmp_path / "res" / "j.png").exists()

    done = CliRunner().invoke(app, ["bench", "tiny_grm.yaml", "--provider", "nope"])
    assert done.exit_code == 2 and "unknown provider nope" in done.output
    done = CliRunner().invoke(app, ["bench", "missing.yaml", "--device", "cpu"])
    assert done.exit_code == 2 and "file not found: missing.yaml" in done.output


def test_cli_exits_1_when_a_provider_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_spec(tmp_path)
    monkeypatch.setitem(providers.PROVIDERS, "wrong", wrong_provider([], scale_out=2.0))
    done = CliRunner().invoke(
        app,
        ["bench", "tiny_grm.yaml", "--provider", "wrong", "--seq-len", "16", "--tokens", "16"]
        + ["--mode", "fwd", "--out", "res", "--device", "cpu"],
    )
    assert done.exit_code == 1, done.output
    assert "refused" in done.output and "output disagrees" in done.output
    rows = json.loads((tmp_path / "res" / "bench.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["refused"]
