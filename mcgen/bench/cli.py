"""`mcgen bench SPEC [SPEC ...]`: the command over mcgen.bench.harness.run_bench.

Registered on mcgen's typer app by mcgen/cli.py. Prints a table (or one JSON document
with --json), writes OUT/NAME.csv, OUT/NAME.json and OUT/NAME.png, and exits 1 when a
provider was refused (it disagreed with the reference), 2 on bad input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mcgen.bench.harness import CPU_DEFAULTS, GPU_DEFAULTS, BenchConfig, BenchError, run_bench
from mcgen.console import CommandError, out, progress_bars, reported_errors

DEFAULT_OUT = Path("benchmarks/results")


def _defaults(key: str) -> str:
    def show(value: Any) -> str:
        if value is None:
            return "the spec's"
        return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)

    return f"GPU {show(GPU_DEFAULTS[key])}; CPU {show(CPU_DEFAULTS[key])}"


def bench(
    specs: Annotated[list[Path], typer.Argument(help="One or more spec files.")],
    provider: Annotated[
        list[str] | None,
        typer.Option(
            "--provider",
            help="generated-triton, generated-torch, naive, sdpa, fla or fla-gated-delta (repeat). "
            "Default: " + _defaults("providers"),
        ),
    ] = None,
    mode: Annotated[
        list[str] | None, typer.Option("--mode", help="fwd or fwd+bwd (repeat); default both.")
    ] = None,
    seq_len: Annotated[
        list[int] | None,
        typer.Option("--seq-len", help="T (repeat). Default: " + _defaults("seq_lens")),
    ] = None,
    tokens: Annotated[
        int | None,
        typer.Option("--tokens", help="B*T, fixed over the sweep. Default: " + _defaults("tokens")),
    ] = None,
    segment_length: Annotated[
        list[int] | None,
        typer.Option("--segment-length", help="C (repeat): rebuild each spec with it."),
    ] = None,
    heads: Annotated[
        int | None, typer.Option("--heads", help="H. Default: " + _defaults("heads"))
    ] = None,
    key_dim: Annotated[
        int | None, typer.Option("--key-dim", help="K. Default: " + _defaults("key_dim"))
    ] = None,
    value_dim: Annotated[
        int | None, typer.Option("--value-dim", help="V. Default: " + _defaults("value_dim"))
    ] = None,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="bf16 or fp32. Default: " + _defaults("dtype"))
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="auto (CUDA when present), cuda or cpu.")
    ] = "auto",
    threads: Annotated[
        int | None, typer.Option("--threads", help="CPU threads for torch (default: torch's).")
    ] = None,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Where NAME.csv, NAME.json and NAME.png go.")
    ] = DEFAULT_OUT,
    name: Annotated[str, typer.Option("--name", help="File name stem of the results.")] = "bench",
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Write no PNG.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document for machines.")
    ] = False,
) -> None:
    """Time the generated kernels against naive torch, SDPA and fla over T and segment length.

    Each provider is first checked against the fp64 reference on the same device.
    One that disagrees is refused (reported, never timed); the exit code is then 1.
    """
    config = BenchConfig(
        specs=tuple(specs),
        providers=tuple(provider) if provider else None,
        modes=tuple(mode) if mode else ("fwd", "fwd+bwd"),
        seq_lens=tuple(seq_len) if seq_len else None,
        tokens=tokens,
        segment_lengths=tuple(segment_length) if segment_length else None,
        heads=heads,
        key_dim=key_dim,
        value_dim=value_dim,
        dtype=dtype,
        device=device,
        threads=threads,
    )
    with reported_errors():
        try:
            config = config.resolved()
            with progress_bars(as_json) as make_task:
                # Rows are written as they come (no plot): a stopped sweep keeps them.
                result = run_bench(
                    config,
                    progress=make_task,
                    checkpoint=lambda partial: partial.write(out_dir, name, plot=False),
                )
        except BenchError as exc:
            raise CommandError(str(exc)) from None  # --json: a JSON error object
    paths = result.write(out_dir, name, plot=not no_plot)
    if as_json:
        document = result.to_json() | {"files": {k: str(v) for k, v in paths.items()}}
        out.print_json(json.dumps(document))
    else:
        render(result.to_json(), out)
        for path in paths.values():
            out.print(f"wrote {escape(str(path))}", highlight=False)
    if result.refused:
        raise typer.Exit(1)


def render(document: dict[str, Any], console) -> None:
    """The timed rows as a table; refusals, skips and errors once each below it."""
    env = document["environment"]
    rows = document["rows"]
    threads = env.get("threads")
    machine = env["device"]
    if threads:
        machine += f", {threads} thread{'s' if threads > 1 else ''}"
    versions = ", ".join(
        f"{k} {env[k]}" for k in ("driver", "cuda", "torch", "triton", "python") if env.get(k)
    )
    # A CPU reaches GFLOP/s, a GPU TFLOP/s.
    unit, per = ("TFLOP/s", 1.0) if env["device_type"] == "cuda" else ("GFLOP/s", 1e3)
    table = Table(title=f"mcgen bench on {machine} ({versions})")
    for column in ("target", "provider", "mode", "B x T", "ms", "peak MiB", unit, "check"):
        left = column in ("target", "provider", "mode")
        table.add_column(column, justify="left" if left else "right", no_wrap=True)
    notes: dict[tuple[str, str, str], None] = {}
    for row in rows:
        target = _target(row)
        if row["status"] != "ok":
            what = f"{row['provider']} ({target}, {row['mode']})"
            notes[(row["status"], what, row["reason"] or "")] = None
            if row["status"] != "error":
                continue
        peak = row["peak_bytes"]
        errors = [e for e in (row["check_error"], row["check_grad_error"]) if e is not None]
        if row["mode"] == "fwd":
            errors = errors[:1]
        table.add_row(
            target,
            row["provider"],
            row["mode"],
            f"{row['batch']} x {row['seq_len']}",
            "[red]error[/]" if row["status"] == "error" else f"{row['time_ms']:.3f}",
            "n/a" if peak is None else f"{peak / 2**20:.1f}",
            "" if row["tflops"] is None else f"{row['tflops'] * per:.3g}",
            f"{max(errors):.1e}" if errors else "",
        )
    if not console.is_terminal:  # whole lines in logs and pipes, not the default 80 columns
        console = Console(file=console.file, width=160, no_color=console.no_color)
    console.print(table)
    console.print(
        "check: worst rel. error against the fp64 truth at the small shape "
        "(outputs; with fwd+bwd, gradients too)",
        highlight=False,
        soft_wrap=True,
    )
    for (status, what, reason), _ in notes.items():
        colour = {"refused": "bold red", "error": "red", "skipped": "yellow"}.get(status, "bold")
        console.print(
            f"[{colour}]{status}[/] {escape(what)}: {escape(reason)}",
            highlight=False,
            soft_wrap=True,
        )


def _target(row: dict[str, Any]) -> str:
    if not row["spec"]:
        return "baseline"
    c = row["segment_length"]
    return row["spec"] if c is None else f"{row['spec']} C={c}"
