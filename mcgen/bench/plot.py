"""Plots of benchmark rows as PNG (matplotlib, Agg), log-log, one panel per spec and mode.

`plot_times`: time against T (B x T fixed), a line per provider and segment length, the
baselines (SDPA, fla) drawn in every panel. `plot_segments`: time against the segment
length C at the longest T of the run, a line per provider, the baselines as horizontal
lines: where caching more often (small C) stops paying.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

MARKERS = {"generated-triton": "o", "generated-torch": "s", "naive": "^", "sdpa": "D", "fla": "v"}
LINESTYLES = {"generated-triton": "-", "generated-torch": "-", "naive": ":"}
BASELINE_COLOURS = {"sdpa": "black", "fla": "dimgray"}


def target_label(row: dict[str, Any]) -> str | None:
    """ "grm C=64" for a spec's provider, None for a baseline."""
    if not row.get("spec"):
        return None
    c = row.get("segment_length")
    return row["spec"] if c in (None, "") else f"{row['spec']} C={c}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _timed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] == "ok" and r.get("time_ms")]


def _grid(plt, rows: list[dict[str, Any]]):
    """A figure with a panel per (spec, mode); baselines alone get one row of panels."""
    modes = sorted({r["mode"] for r in rows}, key=lambda m: (m != "fwd", m)) or ["fwd"]
    specs = sorted({str(r["spec"]) for r in rows if r.get("spec")}) or [""]
    fig, axes = plt.subplots(
        len(specs),
        len(modes),
        figsize=(7 * len(modes), 1 + 4.5 * len(specs)),
        squeeze=False,
        constrained_layout=True,
    )
    panels = {(s, m): axes[i][j] for i, s in enumerate(specs) for j, m in enumerate(modes)}
    return fig, axes, panels


def _style(row: dict[str, Any], colour) -> dict[str, Any]:
    provider = str(row["provider"])
    return {
        "marker": MARKERS.get(provider, "x"),
        "linestyle": LINESTYLES.get(provider, "--"),
        "color": colour if row.get("spec") else BASELINE_COLOURS.get(provider, "gray"),
    }


def _finish(fig, axes, path: Path, title: str | None, rows: list[dict[str, Any]]) -> Path:
    handles: dict[str, Any] = {}  # one legend for every panel, below them
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
        if not ax.lines:
            ax.text(0.5, 0.5, "nothing timed", ha="center", va="center", transform=ax.transAxes)
    if handles:
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="outside lower center",
            ncol=min(4, len(handles)),
            fontsize="small",
        )
    if title is None and rows:
        first = rows[0]
        title = (
            f"{first.get('device')}: H={first.get('heads')} K={first.get('key_dim')} "
            f"V={first.get('value_dim')} {first.get('dtype')}, B x T = "
            f"{int(first['batch']) * int(first['seq_len'])}"
        )
    if title:
        fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_times(rows: list[dict[str, Any]], path: Path, title: str | None = None) -> Path:
    """Time against T, a panel per (spec, mode); writes the PNG to path and returns path."""
    plt = _pyplot()
    timed = _timed(rows)
    fig, axes, panels = _grid(plt, rows)
    lengths = sorted({int(r["segment_length"]) for r in timed if r.get("segment_length")})
    palette = plt.get_cmap("tab10")
    colours = {c: palette(i % palette.N) for i, c in enumerate(lengths)}
    for (spec, mode), ax in panels.items():
        series: dict[tuple, list[tuple[int, float]]] = defaultdict(list)
        styles: dict[tuple, dict[str, Any]] = {}
        for row in timed:
            if row["mode"] != mode or (row.get("spec") and row["spec"] != spec):
                continue
            c = row.get("segment_length")
            key = (not row.get("spec"), int(c or 0), str(row["provider"]))
            series[key].append((int(row["seq_len"]), float(row["time_ms"])))
            styles[key] = _style(row, colours.get(int(c)) if c else None)
        for key in sorted(series):
            points = sorted(series[key])
            label = key[2] if key[0] or not key[1] else f"C={key[1]}: {key[2]}"
            ax.plot([p[0] for p in points], [p[1] for p in points], label=label, **styles[key])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("T (sequence length; B x T fixed)")
        ax.set_ylabel("median time (ms)")
        ax.set_title(f"{spec}: {mode}" if spec else mode)
        ax.grid(True, which="both", alpha=0.3)
    path = _finish(fig, axes, path, title, rows)
    plt.close(fig)
    return path


def plot_segments(rows: list[dict[str, Any]], path: Path, title: str | None = None) -> Path:
    """Time against segment length at the run's longest T, a panel per (spec, mode)."""
    plt = _pyplot()
    timed = _timed(rows)
    longest = max((int(r["seq_len"]) for r in timed), default=0)
    at_longest = [r for r in timed if int(r["seq_len"]) == longest]
    fig, axes, panels = _grid(plt, rows)
    for (spec, mode), ax in panels.items():
        series: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for row in at_longest:
            if row["mode"] == mode and row.get("spec") == spec and row.get("segment_length"):
                series[str(row["provider"])].append(
                    (int(row["segment_length"]), float(row["time_ms"]))
                )
        for provider, points in sorted(series.items()):
            points.sort()
            style = _style({"provider": provider, "spec": spec}, None)
            ax.plot([p[0] for p in points], [p[1] for p in points], label=provider, **style)
        for row in at_longest:  # the baselines do not depend on C: horizontal lines
            if row["mode"] == mode and not row.get("spec"):
                ax.axhline(
                    float(row["time_ms"]),
                    color=BASELINE_COLOURS.get(str(row["provider"]), "gray"),
                    linestyle="--",
                    label=str(row["provider"]),
                )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("segment length C")
        ax.set_ylabel("median time (ms)")
        ax.set_title(f"{spec}: {mode}, T = {longest}" if spec else f"{mode}, T = {longest}")
        ax.grid(True, which="both", alpha=0.3)
    path = _finish(fig, axes, path, title, at_longest or rows)
    plt.close(fig)
    return path
