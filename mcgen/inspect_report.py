"""`mcgen inspect`: the IR before and after the passes, what they rewrote, and the cost table.

Plain data first (`inspect_spec` -> `InspectReport`, `to_json` for `--json`), rendering
second (`render_report`, with rich), so the CLI stays a thin layer and tests call these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import networkx as nx
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from mcgen.components.registry import AGGREGATIONS
from mcgen.ir.ops import Aggregate, Scan, nodes_of, reads_from
from mcgen.ir.render import to_dot, to_text
from mcgen.passes.cost import CostRow, annotate_cost, cost_table
from mcgen.passes.pipeline import DEFAULT_SEQ_LEN, compile_spec
from mcgen.spec.schema import Spec
from mcgen.tables import print_table

_SI = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))
_BINARY = ((1 << 50, "Pi"), (1 << 40, "Ti"), (1 << 30, "Gi"), (1 << 20, "Mi"), (1 << 10, "Ki"))


@dataclass(frozen=True)
class InspectReport:
    name: str
    seq_len: int
    batch: int
    text_before: str
    text_after: str
    dot_before: str
    dot_after: str
    notes: list[str]
    cost_rows: list[CostRow]
    cost_before: dict[str, Any]  # the graph-level cost summary of the IR as lowered
    cost_after: dict[str, Any]  # ... and after the passes
    # What one memory state is, in words: a V x K matrix, or an MLP and its weights per head.
    memory: str = ""
    # How the Triton backend reads cached memories, and why ("" when nothing is cached).
    read_form: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seq_len": self.seq_len,
            "batch": self.batch,
            "memory": self.memory,
            "read_form": self.read_form,
            "ir": {
                "before": {"text": self.text_before, "dot": self.dot_before},
                "after": {"text": self.text_after, "dot": self.dot_after},
            },
            "notes": list(self.notes),
            "cost": {
                "before": dict(self.cost_before),
                "after": dict(self.cost_after),
                "table": [
                    {
                        "metric": row.metric,
                        "unit": row.unit,
                        "spec": row.spec,
                        "attention": row.attention,
                        "ratio": row.ratio,
                    }
                    for row in self.cost_rows
                ],
            },
        }


def inspect_spec(spec: Spec, seq_len: int = DEFAULT_SEQ_LEN, batch: int = 1) -> InspectReport:
    compiled = compile_spec(spec, seq_len)
    # Batch scales totals only; re-annotate when asked for another batch.
    after = compiled.after if batch == 1 else annotate_cost(compiled.after, seq_len, batch)
    before = annotate_cost(compiled.before, seq_len, batch)
    return InspectReport(
        name=spec.name,
        seq_len=seq_len,
        batch=batch,
        text_before=to_text(compiled.before),
        text_after=to_text(after),
        dot_before=to_dot(compiled.before),
        dot_after=to_dot(after),
        notes=compiled.notes,
        cost_rows=cost_table(after),
        cost_before=dict(before.graph["cost"]),
        cost_after=dict(after.graph["cost"]),
        memory=describe_memory(after),
        read_form=describe_read_form(after),
    )


def describe_read_form(graph: nx.DiGraph) -> str:
    """The algorithm chosen for the cached reads and why (passes/read_form.py)."""
    found = reads_from(graph, "cache")
    if found is None or found[1].form_reason is None:
        return ""
    return f"{found[1].form} form: {found[1].form_reason}"


def describe_memory(graph: nx.DiGraph) -> str:
    """One line on the memory a graph keeps per head, and how soup reads it when it stays."""
    scan = next((op for _, op in nodes_of(graph, Scan)), None)
    if scan is None:
        return ""
    dims, rec = scan.state_dims, scan.recurrence
    if graph.graph.get("memory") != "deep":
        return f"matrix ({rec}): one {dims.get('V')} x {dims.get('K')} state per head"
    rates = ", ".join(
        f"{name}={getattr(scan, name)}"
        for name in ("lr", "momentum", "decay")
        if getattr(scan, name) is not None
    )
    line = (
        f"deep ({rec}): {scan.state_shape}, K={dims.get('K')}, "
        f"Dh={scan.hidden}, {scan.activation}; {scan.params} weights per "
        f"head; mini-batch {scan.minibatch}; {rates}"
    )
    agg = next((op for _, op in nodes_of(graph, Aggregate)), None)
    aggregation = AGGREGATIONS.find(agg.kind) if agg is not None else None
    if aggregation is not None and aggregation.mixes_weights:
        line += (
            f"; {aggregation.name} mixes the memories' weights and reads once (an MLP is not "
            f"linear in its weights, so it stays distinct from {aggregation.matrix_equivalent})"
        )
    return line


def format_quantity(value: float, unit: str) -> str:
    """SI prefixes (1.2 GFLOP), binary ones for bytes (3.4 MiB), a bare number for counts."""
    if unit == "B":
        for scale, prefix in _BINARY:
            if abs(value) >= scale:
                return f"{value / scale:.3g} {prefix}B"
        return f"{value:.0f} B"
    for scale, prefix in _SI:
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}".rstrip()
    text = f"{value:.0f}" if float(value).is_integer() else f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def format_ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.3g}x"


def cost_rich_table(report: InspectReport) -> Table:
    table = Table(
        title=f"cost at seq_len={report.seq_len}, batch={report.batch} (ratio = spec / attention)"
    )
    table.add_column("metric")
    table.add_column(report.name, justify="right")
    table.add_column("softmax attention", justify="right")
    table.add_column("ratio", justify="right")
    for row in report.cost_rows:
        table.add_row(
            row.metric,
            format_quantity(row.spec, row.unit),
            format_quantity(row.attention, row.unit),
            format_ratio(row.ratio),
        )
    return table


def render_report(
    report: InspectReport, console: Console | None = None, *, show_dot: bool = False
) -> None:
    """Print the report: IR before and after, notes, then the cost table."""
    console = console or Console()
    # Text objects, not markup strings: IR lines contain brackets rich would parse.
    if report.memory:
        console.print(Text(f"memory: {report.memory}"))
    if report.read_form:
        console.print(Text(f"cached reads: {report.read_form}"))
    console.print(Panel(Text(report.text_before.rstrip()), title="IR as lowered"))
    console.print(Panel(Text(report.text_after.rstrip()), title="IR after passes"))
    if report.notes:
        for note in report.notes:
            console.print(Text(f"- {note}"))
    else:
        console.print(Text("no rewrites: the spec is already canonical"))
    if show_dot:
        console.print(Panel(Text(report.dot_before.rstrip()), title="DOT as lowered"))
        console.print(Panel(Text(report.dot_after.rstrip()), title="DOT after passes"))
    print_table(console, cost_rich_table(report))  # whole rows in a pipe too
