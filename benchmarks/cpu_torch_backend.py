"""CPU benchmark of the generated torch backend (docs/performance.md, "On CPU ...").

    python benchmarks/cpu_torch_backend.py [--seq-len 1024] [--segment 64] [--repeats ...]

Times, on this machine's CPU, GRM over a linear matrix memory with the torch backend
against the per-token fp64 reference and against plain chunked linear attention (the
`none` aggregation: the base RNN, same chunked code without caching); then measures
the backend's peak memory as T grows, to show it grows with T * N and not T^2.
Prints tables and writes them as JSON under benchmarks/results/. A benchmark, not a
test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
import torch.utils.benchmark as tbench
from rich.console import Console
from rich.progress import track
from rich.table import Table

from mcgen.bench.results import cpu_name
from mcgen.bench.timing import cpu_peak_bytes as peak_bytes
from mcgen.build import build
from mcgen.packages import import_package

SPEC = """name: {name}
memory: {{recurrence: linear, heads: {heads}, key_dim: {dim}, value_dim: {dim}}}
cache: {{segments: {segments}}}
aggregation: {{kind: {aggregation}}}
layer: {{d_model: 256}}
compute: {{chunk_size: {chunk}}}
"""


def build_package(workdir: Path, name: str, aggregation: str, args) -> object:
    segments = (
        f"{{kind: constant, length: {args.segment}}}" if aggregation != "none" else "{kind: none}"
    )
    spec = workdir / f"{name}.yaml"
    spec.write_text(
        SPEC.format(
            name=name,
            heads=args.heads,
            dim=args.dim,
            segments=segments,
            aggregation=aggregation,
            chunk=args.chunk,
        )
    )
    return import_package(build(spec, workdir / "out").path)


def make_inputs(batch, seq_len, heads, dim, *, grad=False):
    gen = torch.Generator().manual_seed(0)
    x = {n: torch.randn(batch, seq_len, heads, dim, generator=gen) for n in ("q", "k", "v", "u")}
    return {n: t.requires_grad_(grad) for n, t in x.items()}


def median_ms(fn, min_run_time: float) -> float:
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64, help="K = V")
    parser.add_argument("--segment", type=int, default=64, help="constant segment length C")
    parser.add_argument("--chunk", type=int, default=64, help="compute.chunk_size")
    parser.add_argument("--min-run-time", type=float, default=3.0, help="seconds per case")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--memory-lengths", default="1024,2048,4096,8192")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/cpu_torch_backend.json")
    )
    args = parser.parse_args()
    console = Console()
    machine = f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    console.print(f"CPU: {machine}")

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        grm = build_package(workdir, "bench_grm", "grm", args)
        linear = build_package(workdir, "bench_linear", "none", args)
        b, t, h, d = args.batch, args.seq_len, args.heads, args.dim
        x = make_inputs(b, t, h, d)
        xg = make_inputs(b, t, h, d, grad=True)
        lin_x = {n: x[n] for n in ("q", "k", "v")}
        lin_xg = {n: xg[n] for n in ("q", "k", "v")}

        def fwd_bwd(fn, inputs):
            def run():
                fn(**inputs).sum().backward()

            return run

        cases = {
            ("reference (fp64, per token)", "fwd"): lambda: grm.reference(**x),
            ("torch backend (fp32)", "fwd"): lambda: grm.mc_forward(**x),
            ("plain chunked linear attention", "fwd"): lambda: linear.mc_forward(**lin_x),
            ("reference (fp64, per token)", "fwd+bwd"): fwd_bwd(grm.reference, xg),
            ("torch backend (fp32)", "fwd+bwd"): fwd_bwd(grm.mc_forward, xg),
            ("plain chunked linear attention", "fwd+bwd"): fwd_bwd(linear.mc_forward, lin_xg),
        }
        # This machine may be shared: time the cases in interleaved rounds, so a slow
        # spell hits every case alike, and take speed-ups round by round.
        rounds: dict[tuple[str, str], list[float]] = {case: [] for case in cases}
        for _ in track(range(args.rounds), description="timing", console=console):
            for case, fn in cases.items():
                rounds[case].append(median_ms(fn, args.min_run_time / args.rounds))
        rows = []
        for (name, mode), times in rounds.items():
            reference = rounds[("reference (fp64, per token)", mode)]
            speedup = statistics.median(r / t for r, t in zip(reference, times, strict=True))
            rows.append((name, mode, statistics.median(times), speedup))
        table = Table(
            title=f"GRM, linear memory: B={b} H={h} T={t} K=V={d} "
            f"C={args.segment} chunk={args.chunk} ({machine})"
        )
        for column in ("implementation", "mode", "median ms", "speed-up vs reference"):
            table.add_column(
                column, justify="left" if column in ("implementation", "mode") else "right"
            )
        for name, mode, ms, speedup in rows:
            table.add_row(name, mode, f"{ms:.2f}", f"{speedup:.1f}x")
        console.print(table)

        memory_rows = []
        for seq_len in (int(s) for s in args.memory_lengths.split(",")):
            xm = make_inputs(b, seq_len, h, d)
            peak = peak_bytes(lambda xm=xm: grm.mc_forward(**xm))
            cached = seq_len // args.segment
            memory_rows.append((seq_len, cached, peak))
        mem_table = Table(title="torch backend forward, peak live tensor memory as T grows")
        for column in ("T", "N cached", "peak MiB", "bytes / T", "bytes / (T*N)", "bytes / T^2"):
            mem_table.add_column(column, justify="right")
        for seq_len, cached, peak in memory_rows:
            mem_table.add_row(
                str(seq_len),
                str(cached),
                f"{peak / 2**20:.1f}",
                f"{peak / seq_len:.0f}",
                f"{peak / (seq_len * max(cached, 1)):.0f}",
                f"{peak / seq_len**2:.1f}",
            )
        console.print(mem_table)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": machine,
        "shape": {
            "batch": b,
            "seq_len": t,
            "heads": h,
            "dim": d,
            "segment": args.segment,
            "chunk": args.chunk,
        },
        "timings_ms": [
            {"implementation": n, "mode": m, "median_ms": ms, "speedup_vs_reference": x}
            for n, m, ms, x in rows
        ],
        "memory": [{"seq_len": s, "cached": c, "peak_bytes": p} for s, c, p in memory_rows],
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"saved {args.out}")


if __name__ == "__main__":
    main()
