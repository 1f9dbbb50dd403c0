"""The report of a study: its Pareto front (accuracy up, cost down) as a table, a plot
(PNG; HTML too when plotly is installed), report.md and report.json, and each Pareto
candidate written as a spec file that `mcgen build` accepts.

The front is taken over the memory-caching candidates that meet the space's budget
(the base RNN is one of them); softmax attention is a reference point on the plot and
in the table, never on the front (it is not a spec). The report says so, names the
front's trials attention beats on both objectives, and says how bytes are counted
(states at 4 bytes a number, attention's key/value cache at 2).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from mcgen.components.registry import AGGREGATIONS, SEGMENTATIONS
from mcgen.passes.cost import BF16, FP32
from mcgen.search import study as studies
from mcgen.search import trials
from mcgen.search.grid.report import write_grid_report
from mcgen.search.journal import torn_bytes
from mcgen.search.objective import eval_length, short_slice, test_keys
from mcgen.search.space import SearchSpace, parse_space
from mcgen.spec import parse_spec
from mcgen.spec.rules import resolve

COST_LABELS = {
    "decode_state_bytes": "decode state (bytes, whole model)",
    "train_flops_per_token": "training FLOPs per token (whole model)",
    "gpu_latency_ms": "forward latency on the GPU (ms, whole model)",
}


@dataclass(frozen=True)
class Row:
    """One finished trial, as the report shows it."""

    number: int
    accuracy: float
    cost: float
    role: str  # "candidate" | "base RNN" | "attention"
    feasible: bool
    spec_name: str | None
    spec: str | None  # YAML, None for attention
    aggregation: str
    segments: str  # "constant 32", "none", ...
    init: str
    top_k: int | None
    recurrence: str
    width: int
    best_lr: float | None
    per_slice: dict[str, float]
    reused_from: int | None = None
    pareto: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StudyReport:
    study: str
    storage: str
    space_name: str
    cost: str
    cost_label: str
    test_length: int
    budget: float | None  # max decode state bytes
    target: int | None
    counts: trials.Counts
    rows: list[Row]  # every complete trial, by number
    slices: list[str]  # test slice keys
    files: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def pareto(self) -> list[Row]:
        return sorted((r for r in self.rows if r.pareto), key=lambda r: (r.cost, -r.accuracy))

    def reference(self, role: str) -> list[Row]:
        return [r for r in self.rows if r.role == role]

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "storage": self.storage,
            "space": self.space_name,
            "objectives": {"accuracy": "maximize", self.cost: "minimize"},
            "test_length": self.test_length,
            "max_decode_state_bytes": self.budget,
            "target": self.target,
            "trials": {
                "done": self.counts.done,
                "complete": self.counts.complete,
                "pruned": self.counts.pruned,
                "failed": self.counts.failed,
                "failed_run_again": self.counts.rerun,
                "running": self.counts.running,
                "waiting": self.counts.waiting,
            },
            "slices": self.slices,
            "pareto": [r.to_json() for r in self.pareto],
            "references": {
                "base_rnn": [r.to_json() for r in self.reference("base RNN")],
                "attention": [r.to_json() for r in self.reference("attention")],
            },
            "all": [r.to_json() for r in self.rows],
            "files": self.files,
            "notes": self.notes,
        }


def _row(trial: FrozenTrial, space: SearchSpace) -> Row:
    attrs = trial.user_attrs
    reference = attrs.get(trials.REFERENCE)
    role = {"base_rnn": "base RNN", "attention": "attention"}.get(reference, "candidate")
    feasible = all(value <= 0 for value in trial.constraints.values())
    accuracy, cost = trial.values
    common = dict(
        number=trial.number,
        accuracy=accuracy,
        cost=cost,
        role=role,
        feasible=feasible,
        best_lr=attrs.get("best_lr"),
        per_slice=dict(attrs.get("per_slice", {})),
        reused_from=attrs.get("reused_from"),
    )
    if reference == "attention":
        width = int(attrs.get(trials.WIDTH) or 0)
        return Row(
            **common,
            spec_name=None,
            spec=None,
            aggregation="softmax attention",
            segments="-",
            init="-",
            top_k=None,
            recurrence="-",
            width=width,
        )
    spec = resolve(parse_spec(attrs["spec"], f"<trial {trial.number}>"))
    segments = spec.cache.segments
    shape = segments.kind
    if segments.length is not None:
        shape = f"{segments.kind} {segments.length}"
    elif segments.boundaries:
        shape = f"explicit {len(segments.boundaries)}"
    return Row(
        **common,
        spec_name=spec.name,
        spec=attrs["spec"],
        aggregation=spec.aggregation.kind,
        segments=shape,
        init=spec.cache.init if segments.kind != "none" else "-",
        top_k=spec.aggregation.top_k if AGGREGATIONS.of(spec).selects_top_k else None,
        recurrence=spec.memory.recurrence,
        width=spec.layer.d_model,
    )


def _beats(row: Row, other: Row) -> bool:
    """Whether row is at least as good as other on both objectives, better on one."""
    return (
        row.accuracy >= other.accuracy
        and row.cost <= other.cost
        and (row.accuracy > other.accuracy or row.cost < other.cost)
    )


def pareto_numbers(rows: list[Row]) -> set[int]:
    """The trials on the front: feasible spec-bearing rows (one per spec: the first)
    that no other beats on both accuracy (higher) and cost (lower)."""
    pool: dict[str, Row] = {}
    for row in rows:
        if row.spec_name is not None and row.feasible and row.spec_name not in pool:
            pool[row.spec_name] = row
    out = {
        row.number
        for row in pool.values()
        if not any(_beats(other, row) for other in pool.values())
    }
    # Of rows tied on both objectives, keep the first.
    seen: set[tuple[float, float]] = set()
    for row in sorted(pool.values(), key=lambda r: r.number):
        if row.number in out:
            if (row.accuracy, row.cost) in seen:
                out.discard(row.number)
            seen.add((row.accuracy, row.cost))
    return out


def load_report(
    study: str, *, storage: str | None = None, runs_dir: str | Path = studies.DEFAULT_RUNS
) -> tuple[StudyReport, optuna.Study]:
    location = studies.locate(study, storage=storage, runs_dir=runs_dir)
    study_obj, _, space = studies.load_study(location)
    complete = study_obj.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    rows = [_row(t, space) for t in complete]
    front = pareto_numbers(rows)
    rows = [Row(**{**asdict(r), "pareto": r.number in front}) for r in rows]
    slices = test_keys(space)
    report = StudyReport(
        study=study,
        storage=location.describe(),
        space_name=space.name,
        cost=space.objectives.cost,
        cost_label=COST_LABELS[space.objectives.cost],
        test_length=eval_length(space),
        budget=space.objectives.max_decode_state_bytes,
        target=study_obj.user_attrs.get("target"),
        counts=trials.counts(study_obj),
        rows=rows,
        slices=slices,
    )
    report.notes += front_notes(report)
    if location.url is None and (torn := torn_bytes(location.journal)):
        report.notes.append(
            f"{location.journal}: its last record was cut short ({torn} bytes without an end "
            "of line): read up to it; the next `mcgen search` of this study cuts it and keeps "
            "a copy."
        )
    return report, study_obj


def beaten_by_attention(report: StudyReport, row: Row) -> bool:
    return any(_beats(attention, row) for attention in report.reference("attention"))


def _numbers(rows: list[Row]) -> str:
    numbers = [str(r.number) for r in rows]
    if len(numbers) == 1:
        return f"trial {numbers[0]}"
    return f"trials {', '.join(numbers[:-1])} and {numbers[-1]}"


def front_notes(report: StudyReport) -> list[str]:
    """What a reader must know to read the front: attention is left out of it (and
    which of its trials attention beats), and how bytes are counted."""
    notes = []
    attention = report.reference("attention")
    if attention:
        text = (
            "The front is taken over the memory-caching specs: softmax attention is a "
            "reference point, left out of the front (it is not a spec)."
        )
        for row in attention:
            beaten = [r for r in report.pareto if _beats(row, r)]
            if beaten:
                text += (
                    f" At d_model {row.width}, attention (trial {row.number}) is better on both "
                    f"accuracy and cost than Pareto {_numbers(beaten)}."
                )
        notes.append(text)
    if report.cost == "decode_state_bytes" or report.budget is not None:
        text = (
            f"Bytes are counted as the cost model counts them: {FP32} bytes a number for the "
            f"memory-caching states (fp32, as the generated kernels keep them) and {BF16} bytes "
            "a number for attention's key/value cache (bf16)."
        )
        if report.cost == "decode_state_bytes":
            for row in attention:
                text += (
                    f" Counted at {FP32} bytes a number, attention (trial {row.number}) would "
                    f"hold {row.cost * FP32 / BF16:.0f} bytes."
                )
        notes.append(text)
    return notes


# --- files ---------------------------------------------------------------------------------


def _fmt_cost(value: float) -> str:
    return f"{value:.4g}"


def _fmt_lr(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def table_rows(report: StudyReport) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the report's table: the front, then the reference points."""
    header = ["trial", "role", "accuracy", report.cost, "aggregation", "segments", "init"]
    header += ["top_k", "recurrence", "width", "best lr"]
    header += [short_slice(key) for key in report.slices]
    shown = list(report.pareto)
    shown += [r for r in report.rows if r.role != "candidate" and not r.pareto]
    out = []
    for row in shown:
        role = row.role if row.role != "candidate" else "pareto"
        if row.pareto and row.role != "candidate":
            role = f"pareto, {row.role}"
        if row.pareto and beaten_by_attention(report, row):
            role += " (attention beats it)"
        if not row.feasible:
            role += " (over budget)"
        cells = [str(row.number), role, f"{row.accuracy:.4f}", _fmt_cost(row.cost)]
        cells += [row.aggregation, row.segments, row.init]
        cells += ["-" if row.top_k is None else str(row.top_k), row.recurrence, str(row.width)]
        cells += [_fmt_lr(row.best_lr)]
        cells += [f"{row.per_slice[k]:.4f}" if k in row.per_slice else "-" for k in report.slices]
        out.append(cells)
    return header, out


def write_plot(report: StudyReport, path: Path) -> Path:
    """All complete trials, the front highlighted (a step line), the base RNN and
    attention marked and labelled; cost on a log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5.5), dpi=120)
    candidates = [r for r in report.rows if r.role == "candidate" and r.reused_from is None]
    feasible = [r for r in candidates if r.feasible]
    over = [r for r in candidates if not r.feasible]
    if feasible:
        axes.scatter(
            [r.cost for r in feasible],
            [r.accuracy for r in feasible],
            s=28,
            color="0.6",
            label="candidates",
            zorder=2,
        )
    if over:
        axes.scatter(
            [r.cost for r in over],
            [r.accuracy for r in over],
            s=28,
            marker="x",
            color="0.6",
            label="over the state budget",
            zorder=2,
        )
    front = report.pareto
    if front:
        xs, ys = [front[0].cost], [front[0].accuracy]
        for row in front[1:]:
            xs += [row.cost, row.cost]
            ys += [ys[-1], row.accuracy]
        axes.plot(xs, ys, color="tab:orange", linewidth=1.5, zorder=3)
        axes.scatter(
            [r.cost for r in front],
            [r.accuracy for r in front],
            s=60,
            color="tab:orange",
            edgecolor="black",
            label="Pareto front",
            zorder=4,
        )
        for row in front:
            if row.role == "candidate":
                label = row.aggregation
                kind = row.segments.split()[0]
                if kind in (SEGMENTATIONS.owners("cache.segments.length") or ()):
                    label += f" {row.segments.split()[-1]}"
                if row.top_k is not None:
                    label += f" k{row.top_k}"
                axes.annotate(
                    label,
                    (row.cost, row.accuracy),
                    textcoords="offset points",
                    xytext=(6, -10),
                    fontsize=7,
                )
    for role, marker, color in (("base RNN", "s", "tab:blue"), ("attention", "*", "tab:red")):
        refs = report.reference(role)
        if not refs:
            continue
        axes.scatter(
            [r.cost for r in refs],
            [r.accuracy for r in refs],
            s=140 if marker == "*" else 70,
            marker=marker,
            color=color,
            edgecolor="black",
            label=role,
            zorder=5,
        )
        for row in refs:
            axes.annotate(
                f"{role} ({row.accuracy:.2f})",
                (row.cost, row.accuracy),
                textcoords="offset points",
                xytext=(6, 6),
                fontsize=8,
                color=color,
            )
    if report.budget is not None and report.cost == "decode_state_bytes":
        axes.axvline(report.budget, color="0.4", linestyle="--", linewidth=1, label="budget")
    costs = [r.cost for r in report.rows if r.cost > 0]
    if costs and max(costs) > 0:
        axes.set_xscale("log")
    axes.set_xlabel(f"{report.cost_label}, T = {report.test_length}")
    axes.set_ylabel("MQAR accuracy (test)")
    axes.set_ylim(-0.02, 1.02)
    axes.set_title(f"{report.study}: recall against {report.cost}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    plt.close(figure)
    return path


def write_html(study: optuna.Study, report: StudyReport, path: Path) -> Path | None:
    """optuna.visualization's Pareto front, if plotly is installed; else None."""
    try:
        import plotly  # noqa: F401
    except ImportError:
        return None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        figure = optuna.visualization.plot_pareto_front(
            study, target_names=["accuracy", report.cost]
        )
    figure.write_html(str(path))
    return path


def write_specs(report: StudyReport, folder: Path) -> list[Path]:
    """Each Pareto candidate's spec as folder/<name>.yaml (what `mcgen build` takes)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for row in report.pareto:
        assert row.spec is not None and row.spec_name is not None
        mapping = yaml.safe_load(row.spec)
        header = (
            f"# {report.study} trial {row.number}: MQAR accuracy {row.accuracy:.4f}, "
            f"{report.cost} {_fmt_cost(row.cost)} (Pareto front)\n"
        )
        path = folder / f"{row.spec_name}.yaml"
        path.write_text(header + yaml.safe_dump(mapping, sort_keys=False), encoding="utf-8")
        out.append(path)
    return out


def _markdown(report: StudyReport, png: Path | None, out_dir: Path) -> str:
    header, rows = table_rows(report)
    c = report.counts
    lines = [f"# Search report: {report.study}", ""]
    lines.append(
        f"Space `{report.space_name}`; objectives: MQAR accuracy (maximise) against "
        f"{report.cost} (minimise; {report.cost_label} at the test length "
        f"T = {report.test_length})."
    )
    if report.budget is not None:
        lines.append(f"State budget: decode state at most {report.budget:.4g} bytes.")
    lines.append(
        f"Trials: {c.done} done ({c.complete} complete, {c.pruned} pruned over budget), "
        f"{c.failed_label}, {c.running} running, {c.waiting} waiting"
        + (f"; target {report.target}." if report.target else ".")
    )
    lines.append(f"Storage: `{report.storage}`.")
    lines.append("")
    for role in ("base RNN", "attention"):
        for row in report.reference(role):
            lines.append(
                f"- {role} (d_model {row.width}): accuracy {row.accuracy:.4f}, "
                f"{report.cost} {_fmt_cost(row.cost)}"
            )
    best = max(
        (r for r in report.rows if r.role == "candidate"), key=lambda r: r.accuracy, default=None
    )
    base = report.reference("base RNN")
    if best is not None:
        lines.append(
            f"- best candidate: trial {best.number} ({best.aggregation}, {best.segments}), "
            f"accuracy {best.accuracy:.4f}"
            + (
                f", {100 * (best.accuracy - base[0].accuracy):+.1f} points over the base RNN"
                if base
                else ""
            )
        )
    lines.append("")
    if png is not None:
        lines += [f"![Pareto front]({png.relative_to(out_dir).as_posix()})", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines.append("")
    lines.append(
        "Per-slice columns: test accuracy by number of pairs (P) and sequence length (T). "
        "Each Pareto candidate's spec is in `specs/` (build it with `mcgen build`)."
    )
    for note in report.notes:
        lines.append(f"\n{note}")
    return "\n".join(lines) + "\n"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def report_study(
    study: str,
    *,
    storage: str | None = None,
    runs_dir: str | Path = studies.DEFAULT_RUNS,
    out: str | Path | None = None,
    extrapolate: str | Path | None = None,
) -> StudyReport:
    """Write the report of a study into `out` (default runs/<study>/): pareto.png,
    pareto.html (with plotly), report.md, report.json and specs/<name>.yaml for each
    Pareto candidate; for a grid or a study with seeds, grid.md and its plots (accuracy
    against width and decode state, learning curves, cost), with the cost of the space
    `extrapolate` (a file) estimated from this study's timings. Returns the report, its
    files in .files."""
    report, study_obj = load_report(study, storage=storage, runs_dir=runs_dir)
    out_dir = Path(out) if out is not None else Path(runs_dir) / study
    out_dir.mkdir(parents=True, exist_ok=True)
    png = None
    if report.rows:
        png = write_plot(report, out_dir / "pareto.png")
        report.files["png"] = str(png)
        html = write_html(study_obj, report, out_dir / "pareto.html")
        if html is not None:
            report.files["html"] = str(html)
        else:
            report.notes.append("No HTML plot: plotly is not installed.")
    else:
        report.notes.append("No complete trial yet: nothing to plot.")
    space = parse_space(study_obj.user_attrs["space_yaml"], f"<study {study}>")
    if space.sampler == "grid" or space.train.seeds > 1 or extrapolate is not None:
        target = Path(extrapolate) if extrapolate is not None else None
        report.files.update(
            write_grid_report(study_obj, space, study, out_dir, extrapolate_to=target)
        )
        report.notes.append(
            f"Per base, variant and width (mean +- std over seeds): {report.files['grid_md']}"
        )
    specs = write_specs(report, out_dir / "specs")
    report.files["specs"] = [str(p) for p in specs]
    report.files["md"] = str(out_dir / "report.md")
    report.files["json"] = str(out_dir / "report.json")
    Path(report.files["md"]).write_text(_markdown(report, png, out_dir), encoding="utf-8")
    Path(report.files["json"]).write_text(
        json.dumps(_json_safe(report.to_json()), indent=2) + "\n", encoding="utf-8"
    )
    return report
