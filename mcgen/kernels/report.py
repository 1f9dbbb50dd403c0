"""The compiled-kernel report: one row per compiled kernel, totals, checks, table and JSON.

Rows come from the worker's events: every recorded launch (grid, options, arguments) and
each distinct compile's result. Costs come from mcgen.kernels.cost. `problems()` is the
check CI runs: on a 16-bit run every dot on tensor cores, spills within a few hundred
bytes, shared memory within the arch's limit, and every kernel compiled.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mcgen.kernels.compile import TENSOR_CORE_KINDS, Arch, Compiled, dot_counts
from mcgen.kernels.cost import Card, Cost, Problem, compute_peak, kernel_cost, roofline_seconds
from mcgen.tables import print_table

MAX_SPILL_BYTES = 512  # spill stores a kernel may have before the check fails
SIXTEEN_BIT = ("bfloat16", "float16")


@dataclass(frozen=True)
class KernelRow:
    """One compiled kernel: what compiled, how often it runs, and what it should cost."""

    module: str
    kernel: str
    phase: str  # forward, backward, or "forward, backward" (one compile serving both)
    launches: int
    config: int  # its index among the call's autotune configs
    configs: int
    grid: tuple[int, ...]
    constexprs: dict[str, Any]
    compiled: Compiled
    cost: Cost | None  # over all its launches; None: no formula for this kernel
    roofline: float | None  # seconds over all its launches, on the report's card

    @property
    def label(self) -> str:
        tuned = f" [config {self.config + 1}/{self.configs}]" if self.configs > 1 else ""
        return f"{self.module}.{self.kernel}{tuned}"

    @property
    def tiles(self) -> dict[str, int]:
        """The tile sizes: integer constexprs named B* (BK, BV, BLOCK_T, ...)."""
        return {
            name: value
            for name, value in self.constexprs.items()
            if name.startswith("B") and isinstance(value, int) and not isinstance(value, bool)
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "kernel": self.kernel,
            "phase": self.phase,
            "launches": self.launches,
            "config": self.config,
            "configs": self.configs,
            "grid": list(self.grid),
            "tiles": self.tiles,
            "constexprs": self.constexprs,
            **self.compiled.to_json(),
            "dot_counts": dict(dot_counts(self.compiled.dots)),
            "flops": None if self.cost is None else self.cost.flops,
            "bytes": None if self.cost is None else self.cost.bytes,
            "roofline_seconds": self.roofline,
        }


@dataclass(frozen=True)
class Total:
    """The kernels of one pass (or both): cost and roofline time, one config per call."""

    label: str
    cost: Cost
    roofline: float
    unknown: int  # calls of kernels without a cost formula (not in the sums)

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "flops": self.cost.flops,
            "bytes": self.cost.bytes,
            "roofline_seconds": self.roofline,
            "calls_without_cost": self.unknown,
        }


@dataclass(frozen=True)
class KernelReport:
    spec: str
    arch: Arch
    card: Card
    shape: tuple[int, int, int, int, int]
    dtype: str
    problem: Problem
    capture_seconds: float
    rows: tuple[KernelRow, ...]
    totals: tuple[Total, ...]

    @property
    def compile_seconds(self) -> float:
        return sum(row.compiled.seconds for row in self.rows)

    def problems(self, max_spill: int = MAX_SPILL_BYTES) -> list[str]:
        """What fails the compile check, one line per finding (empty: it passes)."""
        found = []
        for row in self.rows:
            c = row.compiled
            where = f"{row.label} ({row.phase})"
            if c.error is not None:
                found.append(f"{where}: does not compile: {c.error}")
                continue
            if c.registers is None:
                found.append(f"{where}: ptxas reported no register use (was it compiled?)")
            if c.spill_stores is not None and c.spill_stores > max_spill:
                found.append(f"{where}: {c.spill_stores} bytes of spill stores > {max_spill}")
            if c.shared is not None and c.shared > self.arch.shared_limit:
                found.append(
                    f"{where}: {c.shared} bytes of shared memory > {self.arch.shared_limit} "
                    f"({self.arch.name}'s limit)"
                )
            slow = [d for d in c.dots if d.kind not in TENSOR_CORE_KINDS]
            if self.dtype in SIXTEEN_BIT and slow:
                operands = ", ".join(sorted({d.operand for d in slow}))
                found.append(
                    f"{where}: {len(slow)} of {len(c.dots)} dots on FMA ({operands} operands), "
                    f"not tensor cores, in a {self.dtype} run"
                )
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "arch": self.arch.name,
            "shared_limit": self.arch.shared_limit,
            "card": self.card.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "problem": self.problem.to_json(),
            "capture_seconds": round(self.capture_seconds, 3),
            "compile_seconds": round(self.compile_seconds, 3),
            "kernels": [row.to_json() for row in self.rows],
            "totals": [total.to_json() for total in self.totals],
            "max_spill_bytes": MAX_SPILL_BYTES,
            "problems": self.problems(),
        }


def _launch_cost(launch: dict[str, Any], compiled: Compiled, problem: Problem, card: Card):
    """(cost, roofline seconds) of one launch, or (None, None) without a formula."""
    cost = kernel_cost(launch["kernel"], problem, launch)
    if cost is None:
        return None, None
    peak = compute_peak(card, [(d.kind, d.operand) for d in compiled.dots])
    return cost, roofline_seconds(cost, card, peak)


def build_report(
    *,
    spec: str,
    arch: Arch,
    card: Card,
    shape: tuple[int, int, int, int, int],
    dtype: str,
    problem: Problem,
    captured: dict[str, Any],
    results: dict[int, Compiled],
) -> KernelReport:
    """The report from the worker's "captured" event and its compile results by index."""
    launches = captured["launches"]
    by_compile: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for launch in launches:
        by_compile[launch["compile"]].append(launch)
    rows = []
    for index in sorted(by_compile):
        group = by_compile[index]
        first = group[0]
        costs = [_launch_cost(launch, results[index], problem, card) for launch in group]
        known = all(cost is not None for cost, _ in costs)
        phases = sorted({launch["phase"] for launch in group}, reverse=True)
        rows.append(
            KernelRow(
                module=first["module"],
                kernel=first["kernel"],
                phase=", ".join(phases),
                launches=len(group),
                config=first["config"],
                configs=first["configs"],
                grid=tuple(first["grid"]),
                constexprs=first["constexprs"],
                compiled=results[index],
                cost=sum((c for c, _ in costs), Cost(0, 0)) if known else None,
                roofline=sum(s for _, s in costs) if known else None,
            )
        )
    totals = (
        _total("forward", launches, results, problem, card, ("forward",)),
        _total("forward+backward", launches, results, problem, card, ("forward", "backward")),
    )
    return KernelReport(
        spec=spec,
        arch=arch,
        card=card,
        shape=shape,
        dtype=dtype,
        problem=problem,
        capture_seconds=captured["seconds"],
        rows=tuple(rows),
        totals=totals,
    )


def _total(label, launches, results, problem, card, phases) -> Total:
    """Sum over the calls of these phases; an autotuned call counts once, at its fastest
    config's roofline."""
    calls: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for launch in launches:
        if launch["phase"] in phases:
            calls[launch["call"]].append(launch)
    cost, seconds, unknown = Cost(0, 0), 0.0, 0
    for group in calls.values():
        priced = [_launch_cost(x, results[x["compile"]], problem, card) for x in group]
        if priced[0][0] is None:
            unknown += 1
            continue
        cost = cost + priced[0][0]
        seconds += min(s for _, s in priced)
    return Total(label, cost, seconds, unknown)


# ---------------------------------------------------------------------------------------
# The table


def _number(value: float | None, scale: float, digits: int = 1) -> str:
    return "-" if value is None else f"{value / scale:,.{digits}f}"


def _dots_text(compiled: Compiled) -> str:
    counts = dot_counts(compiled.dots)
    if not counts:
        return "-"
    return " ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))


def render_kernel_report(report: KernelReport, console: Console) -> None:
    """Print the report as a table (never wrapped: piped output keeps every column)."""
    b, t, h, k, v = report.shape
    table = Table(
        title=(
            f"{report.spec}: kernels compiled for {report.arch.name} at B x T x H x K x V = "
            f"{b} x {t} x {h} x {k} x {v}, {report.dtype}; roofline on {report.card.name}"
        ),
    )
    for column in ("phase", "kernel", "launches", "grid", "tiles", "warps", "stages"):
        table.add_column(column, no_wrap=True)
    for column in ("regs", "spill B", "smem KB", "dots", "compile s"):
        table.add_column(column, justify="right", no_wrap=True)
    for column in ("GFLOP", "MB", "roofline us"):
        table.add_column(column, justify="right", no_wrap=True)
    limit_kb = report.arch.shared_limit / 1024
    failing_16bit = report.dtype in SIXTEEN_BIT
    for row in report.rows:
        c = row.compiled
        spilling = c.spill_stores is not None and c.spill_stores > MAX_SPILL_BYTES
        shared = "-" if c.shared is None else f"{c.shared / 1024:.0f}/{limit_kb:.0f}"
        shared_over = c.shared is not None and c.shared > report.arch.shared_limit
        slow = any(d.kind not in TENSOR_CORE_KINDS for d in c.dots) and failing_16bit
        table.add_row(
            row.phase,
            _kernel_text(row),
            str(row.launches),
            "x".join(str(g) for g in row.grid),
            " ".join(f"{n}={v}" for n, v in row.tiles.items()) or "-",
            _plain_int(c.num_warps),
            _plain_int(c.num_stages),
            _plain_int(c.registers),
            _flag(c.spill_stores, spilling),
            f"[bold red]{shared}[/]" if shared_over else shared,
            f"[bold red]{_dots_text(c)}[/]" if slow else _dots_text(c),
            f"{c.seconds:.1f}",
            _number(None if row.cost is None else row.cost.flops, 1e9),
            _number(None if row.cost is None else row.cost.bytes, 1e6, 0),
            _number(row.roofline, 1e-6),
        )
    for total in report.totals:
        unknown = f" ({total.unknown} calls without a cost)" if total.unknown else ""
        table.add_row(
            f"[bold]{total.label}[/]",
            f"[bold]total{unknown}[/]",
            *[""] * 9,
            f"{report.compile_seconds:.1f}" if total.label == "forward+backward" else "",
            _number(total.cost.flops, 1e9),
            _number(total.cost.bytes, 1e6, 0),
            f"[bold]{_number(total.roofline, 1e-6)}[/]",
        )
    print_table(console, table)
    console.print(
        f"captured the launches in {report.capture_seconds:.0f} s; compiled "
        f"{len(report.rows)} kernels in {report.compile_seconds:.0f} s. Roofline: kernels only "
        f"(the torch glue between them is not counted), each at max(FLOPs / peak of its "
        f"slowest dot path, bytes / {report.card.bandwidth / 1e12:.2f} TB/s).",
        highlight=False,
        soft_wrap=True,
    )
    problems = report.problems()
    for problem in problems:
        console.print(f"[bold red]FAIL[/] {problem}", highlight=False, soft_wrap=True)
    if not problems:
        console.print("[green]compile check passed[/]", highlight=False)


def _plain_int(value: int | None) -> str:
    return "-" if value is None else str(value)


def _flag(value: int | None, bad: bool) -> str:
    text = _plain_int(value)
    return f"[bold red]{text}[/]" if bad else text


def _kernel_text(row: KernelRow) -> str:
    label = escape(row.label)
    return label if row.compiled.error is None else f"[bold red]{label}: does not compile[/]"
