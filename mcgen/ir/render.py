"""Render the graph IR as text (one line per op) and as Graphviz DOT.

Both are deterministic: nodes in topological order with ties broken by insertion order
(the order lowering writes them), so the same graph always renders to the same bytes.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import networkx as nx

from mcgen.ir.ops import Input, Op, Output

# Fields that are shown elsewhere on the line, or too bulky for it. form_reason is prose:
# `mcgen inspect` prints it on its own line ("cached reads: ..."), as it does the choice
# that requested_form asked for.
_HIDDEN = frozenset({"name", "form_reason", "requested_form"})


def ordered_nodes(graph: nx.DiGraph) -> list[str]:
    rank = {node: i for i, node in enumerate(graph.nodes)}
    return list(nx.lexicographical_topological_sort(graph, key=lambda n: rank[n]))


def ordered_inputs(graph: nx.DiGraph, node: str) -> list[tuple[str, str]]:
    """(arg, source) pairs of `node`, in the order the sources appear in the graph."""
    rank = {n: i for i, n in enumerate(graph.nodes)}
    edges = sorted(graph.in_edges(node, data=True), key=lambda e: (rank[e[0]], e[2].get("arg")))
    return [(str(data.get("arg", "")), src) for src, _, data in edges]


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ",".join(f"{k}={format_value(v)}" for k, v in value.items())
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def op_name(attrs: dict[str, Any]) -> str:
    """The kind of a node's op, as shown: `gate`, `recurrence_scan`; `?` for a node with none."""
    op = attrs.get("op")
    return op.kind_name if isinstance(op, Op) else "?"


def node_attributes(attrs: dict[str, Any]) -> list[str]:
    """`field=value` for the fields of the node's op worth showing (None values are left
    out), then its cost per token when the cost pass has run."""
    op = attrs.get("op")
    shown = []
    if isinstance(op, Op):
        for field in fields(op):
            value = getattr(op, field.name)
            if field.name not in _HIDDEN and value is not None:
                shown.append(f"{field.name}={format_value(value)}")
    cost = attrs.get("cost")
    if cost and cost.get("flops_per_token"):
        shown.append(f"flops/token/head={format_value(float(cost['flops_per_token']))}")
    return shown


def to_text(graph: nx.DiGraph) -> str:
    """One line per node: `id: op [attributes] <- arg=source, ...`."""
    order = ordered_nodes(graph)
    width = max((len(str(n)) for n in order), default=0)
    lines = []
    for node in order:
        attrs = graph.nodes[node]
        parts = [f"{str(node).ljust(width)} : {op_name(attrs)}"]
        shown = node_attributes(attrs)
        if shown:
            parts.append(" ".join(shown))
        inputs = ordered_inputs(graph, node)
        if inputs:
            parts.append("<- " + ", ".join(f"{arg}={src}" for arg, src in inputs))
        lines.append("  ".join(parts))
    return "\n".join(lines) + "\n"


def dot_quote(text: str) -> str:
    """A DOT double-quoted string: backslashes and quotes escaped, newlines as \\n."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\n")
    return f'"{escaped}"'


def to_dot(graph: nx.DiGraph, name: str | None = None) -> str:
    """Graphviz DOT: one box per op (inputs as ellipses), edges labelled with their slot."""
    if name is None:
        name = graph.graph.get("name", "mcgen")
    lines = [
        f"digraph {dot_quote(str(name))} {{",
        "  rankdir=TB;",
        '  node [shape=box, fontname="monospace", fontsize=10];',
        '  edge [fontname="monospace", fontsize=9];',
    ]
    order = ordered_nodes(graph)
    for node in order:
        attrs = graph.nodes[node]
        label = "\n".join([f"{node}: {op_name(attrs)}", *node_attributes(attrs)])
        shape = "ellipse" if isinstance(attrs.get("op"), (Input, Output)) else "box"
        lines.append(f"  {dot_quote(str(node))} [label={dot_quote(label)}, shape={shape}];")
    for node in order:
        for arg, src in ordered_inputs(graph, node):
            lines.append(
                f"  {dot_quote(str(src))} -> {dot_quote(str(node))} [label={dot_quote(arg)}];"
            )
    lines.append("}")
    return "\n".join(lines) + "\n"
