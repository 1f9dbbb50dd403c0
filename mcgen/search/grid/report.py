"""grid.md, the report of a study trained fairly: its tables, plots and cost, each under
the command that draws it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import optuna

from mcgen.search.grid.cells import Cell, Guess, guess_floor, load_cells
from mcgen.search.grid.cost import Estimate, extrapolate, timing
from mcgen.search.grid.plots import plot_accuracy_against, plot_accuracy_by_slice, plot_curves
from mcgen.search.grid.tables import cells_table, gains_table, markdown_table, rise_table
from mcgen.search.objective import eval_length, short_slice, test_keys
from mcgen.search.space import SearchSpace, load_space


def _table_section(
    title: str, command: str, legend: str, table: tuple[list[str], list[list[str]]]
) -> list[str]:
    """A section of grid.md: its title, the command, a legend and the table (none when the
    table has no rows)."""
    header, rows = table
    if not rows:
        return []
    lines = ["", f"## {title}", "", f"From `{command}`:", "", legend, ""]
    return lines + markdown_table(header, rows)


def _estimate_lines(estimate: Estimate, target: SearchSpace, target_file: str) -> list[str]:
    t = target.train
    lines = [
        f"## Cost of `{target_file}`, extrapolated from these timings",
        "",
        f"{estimate.candidates} trials (attention included); per candidate "
        f"{estimate.runs_first} runs ({len(t.first_rates())} rates x {t.seeds} seeds), "
        f"{estimate.runs_widest} if every widening of the rate sweep is used; each run at "
        f"most {t.steps} steps, evaluated every {t.eval_every or t.steps}.",
        "",
        "| case | worker-hours | hours with --workers 1 | --workers 2 |",
        "|---|---|---|---|",
    ]
    cases = (
        (
            "every run stops at the plateau rule's earliest step, no widening"
            + (" (then the best rate's go on to the budget)" if t.full_budget_at_best else ""),
            estimate.floor_s,
        ),
        ("every run to its step budget, no widening", estimate.budget_s),
        ("every run to its budget, every widening used", estimate.widest_s),
    )
    for label, seconds in cases:
        lines.append(
            f"| {label} | {seconds / 3600:.2f} | {estimate.hours(seconds, 1):.2f} "
            f"| {estimate.hours(seconds, 2):.2f} |"
        )
    lines += [
        "",
        "Two workers divide the work by two only while both have a trial: the last "
        "(largest) trial can run alone at the end.",
    ]
    return lines


def _guess_lines(guess: Guess) -> list[str]:
    by_slice = ", ".join(f"{short_slice(key)} {acc:.3f}" for key, acc in guess.per_slice.items())
    return [
        f"Guessing among the value tokens seen before each query scores {guess.accuracy:.3f} "
        f"on these tests ({by_slice}; the dotted line in the plots): a cell at or under it "
        "has bound no key to its value.",
        "",
    ]


def grid_markdown(
    study_name: str,
    space: SearchSpace,
    cells: Sequence[Cell],
    files: dict[str, str],
    out_dir: Path,
    guess: Guess,
    estimate: tuple[Estimate, SearchSpace, str] | None = None,
) -> str:
    slices = test_keys(space)
    run = f"mcgen search search/{space.name}.yaml --workers 2 --trials N"
    report = f"mcgen search report {study_name}"
    if estimate is not None:
        report += f" --extrapolate {estimate[2]}"
    lines = [f"# {study_name}: accuracy by base, variant and width", ""]
    lines += [
        f"Task: {space.task} (test length T = {eval_length(space)}); each cell is the best "
        "learning rate's mean +- standard deviation over seeds (each run scored at its "
        "best evaluation), `by seed` each seed's at that rate. `lr range`: bracketed (worse "
        "rates on both sides), capped (the sweep's widenings ran out with the best at an "
        "end) or fixed (a fixed list). "
        + (
            "The plateau rule only picks the rate: the best rate's runs it stopped were "
            "trained on to the step budget, and the score is theirs (`sweep mean`: the "
            "best rate's mean before that)."
            if space.train.full_budget_at_best
            else "`sweep mean`: the same runs' mean (no run is trained again)."
        ),
        "",
        *_guess_lines(guess),
        "Every number below comes from these two commands (N: the study's trial count):",
        "",
        "```bash",
        run,
        report,
        "```",
        "",
    ]
    header, rows = cells_table(cells, slices)
    lines += markdown_table(header, rows)
    lines += _table_section(
        "What caching adds to each base RNN",
        report,
        "`gain`: the variant's mean minus its base RNN's (same recurrence and width), "
        "+- the standard error of that difference (each mean's std / sqrt(seeds), "
        "combined; none where a cell has one seed); `> 2 s.e.`: whether the gain is more "
        "than twice it (with 3 seeds a rough screen, not a test); `seeds above`: how "
        "many of the variant's seeds beat the base RNN's best seed"
        + ("; `gain` of a slice: the same on that test slice alone." if len(slices) > 1 else "."),
        gains_table(cells, slices),
    )
    lines += _table_section(
        "Still rising at the step budget?",
        report,
        "For each run behind a score that trained to the step budget (one that met the "
        "target had nothing left to gain), how much its best accuracy grew over the "
        "budget's last quarter: near zero, more steps would have added little; the "
        "learning curves below show the rest.",
        rise_table(cells, space.train.steps),
    )
    for key, caption in (
        ("accuracy_width", "Accuracy against width"),
        ("accuracy_state", "Accuracy against decode state bytes"),
        ("accuracy_slice", "Accuracy on each test slice"),
        ("curves", "Learning curves at each cell's best rate (one line per seed)"),
    ):
        if key in files:
            relative = Path(files[key]).relative_to(out_dir).as_posix()
            lines += ["", f"## {caption}", "", f"From `{report}`:", ""]
            lines.append(f"![{caption}]({relative})")
    lines += ["", "## Cost measured", "", f"From `{report}`:", ""]
    lines += [
        "`worker s`: what each cell cost one worker, its runs taken from another study "
        "(`--reuse-runs`) counted at their own seconds." + _devices_sentence(cells),
        "",
    ]
    lines += markdown_table(
        ["base", "variant", "width", "s / step", "s / evaluation", "worker s"], []
    )
    for cell in cells:
        t = timing(cell)
        lines.append(
            f"| {cell.base} | {cell.variant} | {cell.width} | {t.step_s:.4f} | {t.eval_s:.3f} "
            f"| {cell.worker_seconds:.0f} |"
        )
    total = sum(cell.worker_seconds for cell in cells)
    lines += ["", f"Total: {total / 3600:.2f} worker-hours over {len(cells)} trials."]
    if estimate is not None:
        lines += ["", *_estimate_lines(*estimate)]
    return "\n".join(lines) + "\n"


def _devices_sentence(cells: Sequence[Cell]) -> str:
    """What the cells' runs were trained on, as each run recorded it (a study resumed on
    another machine names both; journals written before runs kept it name none)."""
    devices = sorted({run.device for cell in cells for run in cell.runs if run.device})
    return f" Measured on: {'; '.join(devices)}." if devices else ""


def write_grid_report(
    study: optuna.Study,
    space: SearchSpace,
    study_name: str,
    out_dir: Path,
    *,
    extrapolate_to: Path | None = None,
) -> dict[str, str]:
    """Write grid.md and its plots into out_dir; returns their paths by key."""
    cells = load_cells(study, space)
    guess = guess_floor(space)
    files: dict[str, str] = {}
    slices = test_keys(space)
    if len({c.width for c in cells}) > 1:  # one width: nothing to draw against
        files["accuracy_width"] = str(
            plot_accuracy_against(
                cells,
                out_dir / "accuracy_width.png",
                x="width",
                title="accuracy against width",
                guess=guess,
            )
        )
    if cells:
        files["accuracy_state"] = str(
            plot_accuracy_against(
                cells,
                out_dir / "accuracy_state.png",
                x="decode_state_bytes",
                title=f"accuracy against decode state at T = {eval_length(space)}",
                guess=guess,
            )
        )
        files["curves"] = str(plot_curves(cells, out_dir / "curves.png", guess))
    if cells and len(slices) > 1:
        path = out_dir / "accuracy_slice.png"
        files["accuracy_slice"] = str(plot_accuracy_by_slice(cells, path, guess, slices))
    estimate = None
    if extrapolate_to is not None:
        target = load_space(extrapolate_to)
        estimate = (extrapolate(cells, target), target, extrapolate_to.as_posix())
    text = grid_markdown(study_name, space, cells, files, out_dir, guess, estimate)
    files["grid_md"] = str(out_dir / "grid.md")
    Path(files["grid_md"]).write_text(text, encoding="utf-8")
    return files
