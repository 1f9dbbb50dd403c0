"""The search report (Pareto front, plot, spec files), the `mcgen search` command line,
and the end-to-end CI search that proves the pipeline learns."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from mcgen.build import build
from mcgen.cli import app
from mcgen.search.local_run import RunOptions, run_study
from mcgen.search.report import (
    COST_LABELS,
    Row,
    StudyReport,
    front_notes,
    pareto_numbers,
    report_study,
    table_rows,
)
from mcgen.search.trials import Counts

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "search" / "tiny.yaml"
CI = REPO / "search" / "ci.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def data_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MCGEN_CACHE", str(tmp_path / "cache"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def row(number: int, accuracy: float, cost: float, **fields) -> Row:
    defaults = dict(
        role="candidate",
        feasible=True,
        spec_name=f"s{number}",
        spec="",
        aggregation="grm",
        segments="constant 8",
        init="checkpoint",
        top_k=None,
        recurrence="linear",
        width=16,
        best_lr=1e-3,
        per_slice={},
    )
    return Row(number=number, accuracy=accuracy, cost=cost, **{**defaults, **fields})


def test_pareto_front_rules():
    rows = [
        row(0, 0.2, 100, role="base RNN"),
        row(1, 0.5, 400),
        row(2, 0.4, 500),  # dominated by 1
        row(3, 0.9, 1000),
        row(4, 0.95, 2000, feasible=False),  # over budget: never on the front
        row(5, 0.99, 50, role="attention", spec_name=None, spec=None),  # not a spec
        row(6, 0.5, 400, spec_name="s1"),  # the same spec again (a reused result)
        row(7, 0.5, 400),  # another spec tied with 1 on both: the first is kept
    ]
    assert pareto_numbers(rows) == {0, 1, 3}


def report_of(rows: list[Row], cost: str = "decode_state_bytes", budget=None) -> StudyReport:
    """A report over these rows, the front marked as load_report marks it."""
    front = pareto_numbers(rows)
    marked = [Row(**{**r.to_json(), "pareto": r.number in front}) for r in rows]
    return StudyReport(
        study="s",
        storage="runs/s/journal.log",
        space_name="s",
        cost=cost,
        cost_label=COST_LABELS[cost],
        test_length=256,
        budget=budget,
        target=None,
        counts=Counts(complete=len(rows)),
        rows=marked,
        slices=[],
    )


ATTENTION = dict(role="attention", spec_name=None, spec=None, aggregation="softmax attention")


def test_the_report_says_attention_is_left_out_of_the_front_and_whom_it_beats():
    # As in docs/search/mqar_cpu.md: attention (0.965 at 131 kB) beats GRM (0.539 at 148 kB).
    rows = [
        row(0, 0.03, 8192, role="base RNN"),
        row(5, 0.43, 78340),
        row(10, 0.54, 148000),
        row(1, 0.965, 131100, **ATTENTION),
    ]
    report = report_of(rows)
    assert {r.number for r in report.pareto} == {0, 5, 10}
    notes = " ".join(front_notes(report))
    assert "softmax attention is a reference point, left out of the front" in notes
    assert "attention (trial 1) is better on both accuracy and cost than Pareto trial 10" in notes
    _, table = table_rows(report)
    roles = {cells[0]: cells[1] for cells in table}
    assert roles["10"] == "pareto (attention beats it)"
    assert roles["5"] == "pareto" and roles["0"] == "pareto, base RNN"


def test_failed_trials_say_how_many_of_them_run_again():
    # A stopped and resumed study fails its interrupted trials and runs each again: the
    # count says so, so that they do not read as errors; an error is re-run by no trial.
    assert Counts(failed=0).failed_label == "0 failed"
    assert Counts(failed=2).failed_label == "2 failed"
    assert Counts(failed=15, rerun=15).failed_label == "15 failed and run again"
    assert Counts(failed=3, rerun=1).failed_label == "3 failed (1 run again)"


def test_the_report_says_how_it_counts_bytes():
    rows = [row(0, 0.03, 8192, role="base RNN"), row(1, 0.965, 131100, **ATTENTION)]
    notes = " ".join(front_notes(report_of(rows)))
    assert "4 bytes a number" in notes and "2 bytes a number" in notes
    assert "attention (trial 1) would hold 262200 bytes" in notes  # counted as states are
    flops = " ".join(front_notes(report_of(rows, cost="train_flops_per_token")))
    assert "bytes a number" not in flops  # no bytes anywhere
    budgeted = " ".join(front_notes(report_of(rows, cost="train_flops_per_token", budget=600)))
    assert "4 bytes a number" in budgeted  # the state budget counts bytes


def test_report_of_a_tiny_study_writes_table_plot_and_buildable_specs(tmp_path):
    runs = tmp_path / "runs"
    run_study(TINY, RunOptions(trials=5, runs_dir=runs, in_process=True))
    report = report_study("tiny", runs_dir=runs)
    front = report.pareto
    assert front and all(r.role != "attention" and r.feasible for r in front)
    assert [r.cost for r in front] == sorted(r.cost for r in front)
    accuracies = [r.accuracy for r in front]
    assert accuracies == sorted(accuracies)  # along a front, more cost buys more accuracy
    assert {r.role for r in report.rows} >= {"base RNN", "attention"}
    assert Path(report.files["png"]).read_bytes()[:8] == PNG_MAGIC
    assert len(report.files["specs"]) == len({r.spec_name for r in front})
    for spec_path in map(Path, report.files["specs"]):
        assert spec_path.parent == runs / "tiny" / "specs"
        built = build(spec_path, tmp_path / "generated")
        assert (built.path / "manifest.json").is_file()
        assert built.spec.name == spec_path.stem
    document = json.loads(Path(report.files["json"]).read_text())
    assert document["trials"]["done"] == 5 and document["objectives"]["accuracy"] == "maximize"
    assert len(document["references"]["attention"]) == 1
    assert document["pareto"][0]["per_slice"].keys() == {"num_pairs=2,seq_len=16"}
    markdown = Path(report.files["md"]).read_text()
    assert "![Pareto front](pareto.png)" in markdown and "| trial | role |" in markdown
    assert "attention (d_model 16)" in markdown
    for note in front_notes(report):
        assert note in markdown and note in document["notes"]
    # Another folder with --out; the study is only read.
    other = report_study("tiny", runs_dir=runs, out=tmp_path / "elsewhere")
    assert Path(other.files["png"]).parent == tmp_path / "elsewhere"
    assert [r.number for r in other.pareto] == [r.number for r in front]


def test_html_is_written_only_with_plotly(tmp_path, monkeypatch):
    import builtins

    runs = tmp_path / "runs"
    run_study(TINY, RunOptions(trials=3, runs_dir=runs, in_process=True))
    real_import = builtins.__import__

    def no_plotly(name, *args, **kwargs):
        if name == "plotly" or name.startswith("plotly."):
            raise ImportError("no plotly here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_plotly)
    report = report_study("tiny", runs_dir=runs)
    assert "html" not in report.files
    assert "No HTML plot: plotly is not installed." in report.notes


def test_search_command_group(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["search", "--help"])
    assert result.exit_code == 0 and "run" in result.output and "report" in result.output
    bad = tmp_path / "bad.yaml"
    mapping = yaml.safe_load(TINY.read_text())
    mapping["vary"]["aggregation.topk"] = [1]
    bad.write_text(yaml.safe_dump(mapping, sort_keys=False))
    # `mcgen search SPACE` is `mcgen search run SPACE`: a bad space is a positioned error.
    for args in (["search", str(bad)], ["search", "run", str(bad)]):
        result = runner.invoke(app, [*args, "--runs", str(tmp_path / "runs")])
        assert result.exit_code == 2
        assert f"{bad}:" in result.output and "vary.aggregation.topk: not a spec field" in (
            result.output
        )
    result = runner.invoke(app, ["search", "report", "nothing", "--runs", str(tmp_path)])
    assert result.exit_code == 2 and "no study 'nothing'" in result.output


def test_report_command_json(tmp_path):
    runs = tmp_path / "runs"
    run_study(TINY, RunOptions(trials=3, runs_dir=runs, in_process=True))
    result = CliRunner().invoke(app, ["search", "report", "tiny", "--runs", str(runs), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["study"] == "tiny" and document["trials"]["done"] == 3


@pytest.mark.slow
def test_end_to_end_search_learns_and_reports(tmp_path):
    """search/ci.yaml through the command line: a worker process trains the base RNN,
    attention and two candidates (300 steps each); attention must learn (well above
    the 0.25 of guessing among the values in context); then the report, and its specs
    build."""
    runs, runner = tmp_path / "runs", CliRunner()
    result = runner.invoke(app, ["search", str(CI), "--trials", "4", "--runs", str(runs)])
    assert result.exit_code == 0, result.output
    assert "4/4 trials done" in result.output
    assert "[4/4] trial" in result.output  # progress lines (not a terminal)

    result = runner.invoke(app, ["search", "report", "ci", "--runs", str(runs)])
    assert result.exit_code == 0, result.output
    assert "Pareto front" in result.output and "attention" in result.output
    for column in ("accuracy", "decode_state_bytes", "aggregation", "best lr", "P4 T64"):
        assert column in result.output
    folder = runs / "ci"
    assert (folder / "pareto.png").read_bytes()[:8] == PNG_MAGIC
    document = json.loads((folder / "report.json").read_text())
    attention = document["references"]["attention"][0]
    assert attention["accuracy"] > 0.6, attention
    assert set(attention["per_slice"]) == {"num_pairs=4,seq_len=32", "num_pairs=4,seq_len=64"}
    base = document["references"]["base_rnn"][0]
    # At T = 64 the base RNN's fixed state is smaller than attention's key/value cache.
    assert 0.0 <= base["accuracy"] <= 1.0 and base["cost"] < attention["cost"]
    specs = sorted((folder / "specs").glob("*.yaml"))
    assert specs and len(specs) == len(document["pareto"])
    result = runner.invoke(app, ["build", *map(str, specs), "--out", str(tmp_path / "gen")])
    assert result.exit_code == 0, result.output
    for spec in specs:
        assert (tmp_path / "gen" / spec.stem / "manifest.json").is_file()


COMMITTED_STUDY = Path(__file__).resolve().parents[1] / "docs" / "search"


@pytest.mark.parametrize(
    "spec_path",
    sorted((COMMITTED_STUDY / "mqar_cpu_specs").glob("*.yaml")),
    ids=lambda p: p.stem,
)
def test_the_committed_studys_pareto_specs_still_build(spec_path: Path, tmp_path: Path) -> None:
    # docs/search/mqar_cpu.md points users at these files: they must stay valid specs.
    result = build(spec_path, tmp_path)
    assert (result.path / "__init__.py").is_file()
    assert result.spec.name == spec_path.stem
    report = json.loads((COMMITTED_STUDY / "mqar_cpu_report.json").read_text())
    named = {t["spec_name"]: t for t in report["pareto"]}
    assert spec_path.stem in named  # and each is a Pareto trial of the committed report


RESEARCH = REPO / "docs" / "research"


# Every study whose journal is committed under docs/research/runs<suffix>/<study>/ (runs/:
# paper_cpu, the needle and longer-budget studies; runs_all_bases/: a second run of a study
# name) and the report drawn from it, committed at docs/research/<study><suffix>/.
COMMITTED_JOURNALS = sorted(
    (runs.name, study.name)
    for runs in RESEARCH.glob("runs*")
    if runs.is_dir()
    for study in runs.iterdir()
    if (study / "journal.log").is_file()
)


def test_the_committed_journals_are_found() -> None:
    assert ("runs", "paper_cpu") in COMMITTED_JOURNALS
    assert ("runs_all_bases", "paper_gpu") in COMMITTED_JOURNALS


@pytest.mark.parametrize(("runs", "study"), COMMITTED_JOURNALS)
def test_a_research_studys_committed_report_is_what_its_committed_journal_draws(
    runs, study, tmp_path, monkeypatch
):
    # docs/research/recall_study.md cites <study>/grid.md as redrawn by one command from
    # runs/<study>/journal.log: a report change or a new snapshot must redraw it.
    journal = RESEARCH / runs / study / "journal.log"
    out = study + runs.removeprefix("runs")
    before = journal.read_bytes()
    monkeypatch.chdir(REPO)  # the command runs from the repository, as the page says
    report = report_study(study, runs_dir=f"docs/research/{runs}", out=tmp_path)
    for name in ("grid.md", "report.md"):
        drawn = (tmp_path / name).read_text(encoding="utf-8")
        drawn = drawn.replace(str(tmp_path), f"docs/research/{out}")
        assert drawn == (RESEARCH / out / name).read_text(encoding="utf-8"), name
    committed = sorted(p.name for p in (RESEARCH / out / "specs").glob("*.yaml"))
    assert sorted(Path(p).name for p in report.files["specs"]) == committed
    assert journal.read_bytes() == before
    assert sorted(p.name for p in journal.parent.iterdir()) == ["journal.log"]
