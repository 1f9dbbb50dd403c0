"""Where memory caching beats a baseline: speedups and crossovers from benchmark rows.

For every timed (spec, segment length, provider, mode), the baseline's time over the
provider's at each T of the sweep, and the crossover: the T from which the provider is
faster, interpolated between the two sweep points that bracket it (linear in log T and
log speedup, since both times follow powers of T). The same over segment length at each
T, when several segment lengths ran. Rows that are not `ok` take no part.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

BASELINE = "sdpa"


@dataclass(frozen=True)
class Sweep:
    """A provider's speedup over the baseline along one swept variable."""

    spec: str
    provider: str
    mode: str
    fixed: str  # what the sweep holds fixed, e.g. "C=256" or "T=32768"
    points: tuple[tuple[int, float], ...]  # (value of the swept variable, speedup), sorted

    @property
    def crossover(self) -> float | None:
        """The smallest swept value from which the provider stays faster (speedup >= 1);
        None if it is never faster at the last point."""
        if not self.points or self.points[-1][1] < 1:
            return None
        start = len(self.points) - 1
        while start > 0 and self.points[start - 1][1] >= 1:
            start -= 1
        if start == 0:
            return float(self.points[0][0])
        (x0, s0), (x1, s1) = self.points[start - 1], self.points[start]
        # log speedup is linear in log x between the two points: solve for log speedup = 0.
        t = -math.log(s0) / (math.log(s1) - math.log(s0))
        return math.exp(math.log(x0) + t * (math.log(x1) - math.log(x0)))

    def describe_crossover(self, variable: str) -> str:
        if not self.points:
            return "-"
        value = self.crossover
        if value is None:
            return f"slower at every {variable}"
        if value == self.points[0][0]:
            return f"faster from the first {variable} ({self.points[0][0]})"
        return f"faster from {variable} ~ {value:.0f}"


def speedups_over_t(rows: list[dict[str, Any]], baseline: str = BASELINE) -> list[Sweep]:
    """One sweep over T per (spec, segment length, provider, mode), against the baseline
    timed at the same (T, mode, dtype)."""
    return _sweeps(rows, baseline, swept="seq_len", held="segment_length", label="C")


def speedups_over_segment_length(
    rows: list[dict[str, Any]], baseline: str = BASELINE
) -> list[Sweep]:
    """One sweep over C per (spec, T, provider, mode) where two or more C ran."""
    sweeps = _sweeps(rows, baseline, swept="segment_length", held="seq_len", label="T")
    return [s for s in sweeps if len(s.points) > 1]


def _sweeps(
    rows: list[dict[str, Any]], baseline: str, *, swept: str, held: str, label: str
) -> list[Sweep]:
    """Group the spec providers' timed rows by (spec, `held`, provider, mode); each point
    is (`swept`, the baseline's time at that row's (T, mode, dtype) over the row's)."""
    timed = [r for r in rows if r["status"] == "ok" and r.get("time_ms")]
    base = {
        (r["seq_len"], r["mode"], r["dtype"]): r["time_ms"]
        for r in timed
        if r["provider"] == baseline
    }
    groups: dict[tuple, list[tuple[int, float]]] = defaultdict(list)
    for r in timed:
        key = (r["seq_len"], r["mode"], r["dtype"])
        if r["provider"] == baseline or not r["spec"] or not r[swept] or key not in base:
            continue
        groups[(r["spec"], r[held] or 0, r["provider"], r["mode"])].append(
            (r[swept], base[key] / r["time_ms"])
        )
    return [
        Sweep(spec, provider, mode, f"{label}={value}" if value else "", tuple(sorted(points)))
        for (spec, value, provider, mode), points in sorted(groups.items())
    ]


def markdown(rows: list[dict[str, Any]], baseline: str = BASELINE) -> str | None:
    """Both analyses as markdown tables (None when the baseline was not timed)."""
    over_t = speedups_over_t(rows, baseline)
    over_c = speedups_over_segment_length(rows, baseline)
    if not over_t and not over_c:
        return None
    lines = [
        f"# Speedup over {baseline}",
        "",
        f"{baseline}'s time over each provider's at the same T, mode and dtype (above 1: "
        "the provider is faster). Crossover: interpolated in log T (or log C) between the "
        "sweep points around it.",
    ]
    for title, sweeps, variable in (
        ("Over T", over_t, "T"),
        ("Over segment length", over_c, "C"),
    ):
        if not sweeps:
            continue
        values = sorted({x for s in sweeps for x, _ in s.points})
        lines += ["", f"## {title}", ""]
        lines.append(
            "| spec | fixed | provider | mode | "
            + " | ".join(f"{variable}={v}" for v in values)
            + " | crossover |"
        )
        lines.append("| --- | --- | --- | --- | " + " | ".join("---:" for _ in values) + " | --- |")
        for s in sweeps:
            at = dict(s.points)
            cells = " | ".join(f"{at[v]:.2f}x" if v in at else "-" for v in values)
            lines.append(
                f"| {s.spec} | {s.fixed or '-'} | {s.provider} | {s.mode} | {cells} "
                f"| {s.describe_crossover(variable)} |"
            )
    return "\n".join(lines) + "\n"
