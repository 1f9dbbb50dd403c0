"""CPU benchmark of deep memories: one MCLayer forward+backward per aggregation.

    python benchmarks/cpu_deep_memory.py [--seq-len 512] [--segment 64] [--minibatch 16]

Times (median) and peak live tensor memory of one layer's forward+backward for Titans
with every aggregation (none, residual, grm, soup, ssc) and DLA with grm, next to GRM
over a linear matrix memory of the same size. Prints a table and writes it as JSON
under benchmarks/results/. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from cpu_torch_backend import median_ms
from rich.console import Console
from rich.progress import track
from rich.table import Table

from mcgen.bench.results import cpu_name
from mcgen.bench.timing import cpu_peak_bytes as peak_bytes
from mcgen.build import build
from mcgen.packages import import_package

SPEC = """name: {name}
memory: {{recurrence: {recurrence}, heads: {heads}, key_dim: {dim}, value_dim: {dim}{deep}}}
cache: {{segments: {{kind: constant, length: {segment}}}}}
aggregation: {{kind: {aggregation}}}
layer: {{d_model: {d_model}}}
"""
CASES = [
    ("linear", "grm"),
    ("titans", "none"),
    ("titans", "residual"),
    ("titans", "grm"),
    ("titans", "soup"),
    ("titans", "ssc"),
    ("dla", "grm"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=32, help="K = V")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--segment", type=int, default=64)
    parser.add_argument("--minibatch", type=int, default=16)
    parser.add_argument("--min-run-time", type=float, default=2.0, help="seconds per case")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu_deep_memory.json"))
    args = parser.parse_args()
    console = Console()
    machine = f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    console.print(f"CPU: {machine}")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for recurrence, aggregation in track(CASES, description="timing", console=console):
            name = f"bench_{recurrence}_{aggregation}"
            deep = "" if recurrence == "linear" else f", deep: {{minibatch: {args.minibatch}}}"
            spec = workdir / f"{name}.yaml"
            spec.write_text(
                SPEC.format(
                    name=name,
                    recurrence=recurrence,
                    heads=args.heads,
                    dim=args.dim,
                    deep=deep,
                    segment=args.segment,
                    aggregation=aggregation,
                    d_model=args.d_model,
                )
            )
            package = import_package(build(spec, workdir / "out").path)
            torch.manual_seed(0)
            layer = package.MCLayer(args.d_model, heads=args.heads, key_dim=args.dim)
            x = torch.randn(args.batch, args.seq_len, args.d_model, requires_grad=True)

            def step(layer=layer, x=x):
                layer(x).square().mean().backward()

            rows.append(
                {
                    "memory": recurrence,
                    "aggregation": aggregation,
                    "fwd_bwd_ms": median_ms(step, args.min_run_time),
                    "peak_bytes": peak_bytes(step),
                    "decode_state_numbers": layer.state_size(args.seq_len),
                }
            )

    table = Table(
        title=f"one MCLayer forward+backward: B={args.batch} T={args.seq_len} H={args.heads} "
        f"K=V={args.dim} d_model={args.d_model} C={args.segment} minibatch={args.minibatch}"
    )
    for column in ("memory", "aggregation", "fwd+bwd ms", "peak MiB", "decode state (numbers)"):
        table.add_column(column, justify="left" if column in ("memory", "aggregation") else "right")
    for row in rows:
        table.add_row(
            row["memory"],
            row["aggregation"],
            f"{row['fwd_bwd_ms']:.1f}",
            f"{row['peak_bytes'] / 2**20:.1f}",
            f"{row['decode_state_numbers']:,}",
        )
    console.print(table)
    console.print(f"({machine})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"machine": machine, "args": vars(args) | {"out": str(args.out)}, "rows": rows},
            indent=2,
        )
        + "\n"
    )
    console.print(f"saved {args.out}")


if __name__ == "__main__":
    main()
