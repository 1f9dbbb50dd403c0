"""depth.md and depth.png: the retrained runs of a needle study (mcgen.search.depth) in a
folder, their accuracy by the needle's depth on each test slice, each trial's seeds
pooled (every bin counts its questions over all of them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mcgen.search.depth import DEPTH_BINS, DepthRun, load_runs
from mcgen.search.errors import SearchError
from mcgen.search.grid.plots import legend_entries, pyplot
from mcgen.search.grid.tables import markdown_table
from mcgen.search.objective import short_slice


@dataclass
class Pooled:
    """One trial's runs: its seeds' counts summed, per slice and depth bin."""

    trial: int
    label: str
    seeds: list[int] = field(default_factory=list)
    correct: dict[str, list[int]] = field(default_factory=dict)
    queries: dict[str, list[int]] = field(default_factory=dict)

    def add(self, run: DepthRun) -> None:
        self.seeds.append(run.seed)
        for key, counts in run.correct.items():
            self.correct[key] = _summed(self.correct.get(key), counts)
            self.queries[key] = _summed(self.queries.get(key), run.queries[key])

    def accuracy(self, key: str) -> list[float | None]:
        """Per depth bin (None for a bin with no needle)."""
        return [
            c / q if q else None for c, q in zip(self.correct[key], self.queries[key], strict=True)
        ]

    def overall(self, key: str) -> float:
        return sum(self.correct[key]) / max(sum(self.queries[key]), 1)


def _summed(total: list[int] | None, counts: list[int]) -> list[int]:
    return list(counts) if total is None else [a + b for a, b in zip(total, counts, strict=True)]


def pooled(runs: list[DepthRun]) -> list[Pooled]:
    by_trial: dict[int, Pooled] = {}
    for run in runs:
        by_trial.setdefault(run.trial, Pooled(run.trial, run.label)).add(run)
    return list(by_trial.values())


def bin_labels() -> list[str]:
    """The depth bins as percent ranges of the haystack: 0-12%, 12-25%, ..."""
    edges = [f"{100 * i / DEPTH_BINS:.0f}" for i in range(DEPTH_BINS + 1)]
    return [f"{lo}-{hi}%" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


def _slices(runs: list[DepthRun]) -> list[str]:
    """The test slices, shortest first."""
    keys = dict.fromkeys(key for run in runs for key in run.correct)
    return sorted(keys, key=lambda k: int(k.rsplit("=", 1)[-1]))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _mismatches(runs: list[DepthRun]) -> list[str]:
    lines = []
    for run in runs:
        if run.reproduced:
            continue
        differ = ", ".join(
            f"{short_slice(k)} {run.journal.get(k, float('nan')):.4f} in the journal, "
            f"{run.retrained.get(k, float('nan')):.4f} retrained"
            for k in sorted(run.journal.keys() | run.retrained.keys())
            if run.journal.get(k) != run.retrained.get(k)
        )
        lines.append(f"- trial {run.trial}, seed {run.seed}: {differ}")
    return lines


def write_depth_report(out_dir: Path, study: str) -> dict[str, str]:
    """Draw depth.md and depth.png from the runs in out_dir; their paths."""
    runs = load_runs(out_dir)
    if not runs:
        raise SearchError(
            f"no retrained run in {out_dir}: run `mcgen search depth {study} --trial N` first"
        )
    cells, slices = pooled(runs), _slices(runs)
    png = plot_depth(cells, slices, out_dir / "depth.png")
    lines = [
        f"# {study}: where the needle is lost",
        "",
        f"Drawn by `mcgen search depth {study}` from the runs in this folder, each trained "
        f"again by `mcgen search depth {study} --trial N --seed S`: the run the study scored "
        "for that trial and seed, at the evaluation it scored. Accuracy by the needle's "
        f"depth, in {DEPTH_BINS} equal bins of where it can sit (0%: the haystack's start, "
        "farthest from the question); a trial's seeds pooled.",
        "",
        "![accuracy by depth](depth.png)",
    ]
    header = ["cell", "trial", "seeds", "all", *bin_labels()]
    for key in slices:
        lines += ["", f"## {short_slice(key)}", ""]
        rows = [
            [
                c.label,
                str(c.trial),
                "/".join(map(str, c.seeds)),
                _fmt(c.overall(key)),
                *map(_fmt, c.accuracy(key)),
            ]
            for c in cells
            if key in c.correct
        ]
        lines += markdown_table(header, rows)
        counts = sorted({q for c in cells if key in c.queries for q in c.queries[key]})
        lines += ["", f"Questions per bin: {counts[0]} to {counts[-1]} (seeds pooled)."]
    mismatches = _mismatches(runs)
    lines += ["", "## Reproduced", ""]
    if mismatches:
        lines += [
            "These runs did not score what the study scored (another machine or "
            "version?); their counts are the retrained model's:",
            "",
            *mismatches,
        ]
    else:
        lines.append(
            f"Every one of the {len(runs)} runs scored, slice by slice, what the journal holds."
        )
    md = out_dir / "depth.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"md": str(md), "png": str(png)}


def plot_depth(cells: list[Pooled], slices: list[str], path: Path) -> Path:
    """One panel per test slice: accuracy against the needle's depth, one line per cell."""
    plt = pyplot()
    figure, axes = plt.subplots(
        1, len(slices), figsize=(4.2 * len(slices), 3.6), dpi=120, sharey=True
    )
    axes = [axes] if len(slices) == 1 else list(axes)
    centres = [100 * (i + 0.5) / DEPTH_BINS for i in range(DEPTH_BINS)]
    for axis, key in zip(axes, slices, strict=True):
        for cell in cells:
            if key in cell.correct:
                axis.plot(centres, cell.accuracy(key), marker="o", markersize=3, label=cell.label)
        axis.set_title(short_slice(key))
        axis.set_xlabel("needle depth (% of the haystack)")
        axis.set_xlim(0, 100)
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (seeds pooled)")
    handles, labels = legend_entries(axes)
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=8)
    figure.tight_layout(rect=(0, 0.08 + 0.04 * (len(labels) // 3), 1, 1))
    figure.savefig(path)
    plt.close(figure)
    return path
