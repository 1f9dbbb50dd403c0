"""`mcgen search depth`: a needle study's scored runs trained again, bit for bit, and their
needles counted by depth."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

from mcgen.cli import app
from mcgen.search import study as studies
from mcgen.search.depth import DEPTH_BINS, DepthRun, depth_bin, load_runs, probe, scored_run
from mcgen.search.depth_report import bin_labels, write_depth_report
from mcgen.search.errors import SearchError
from mcgen.search.local_run import RunOptions, run_study
from mcgen.search.trials import REFERENCE

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "search" / "tiny.yaml"


@pytest.fixture(autouse=True)
def quiet(tmp_path, monkeypatch):
    monkeypatch.setenv("MCGEN_CACHE", str(tmp_path / "cache"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def needle_space(tmp_path: Path, name: str = "needle") -> Path:
    """tiny.yaml on the needle task, two seeds, an evaluation every 2 of its 8 steps."""
    mapping = yaml.safe_load(TINY.read_text(encoding="utf-8"))
    mapping["name"] = name
    del mapping["mqar"]
    mapping["niah"] = {
        "vocab_size": 32,
        "train": [{"seq_len": 16, "num_examples": 64}],
        "test": [{"seq_len": 16, "num_examples": 24}, {"seq_len": 32, "num_examples": 40}],
    }
    mapping["train"].update({"learning_rates": [1.0e-2], "seeds": 2, "steps": 8, "eval_every": 2})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(mapping, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def needle_study(tmp_path):
    """A finished needle study of 3 trials (attention, the base RNN, one candidate)."""
    runs = tmp_path / "runs"
    summary = run_study(
        needle_space(tmp_path), RunOptions(trials=3, runs_dir=runs, in_process=True)
    )
    assert summary.finished and summary.counts.complete == 3
    return runs


def trials_of(runs: Path, study: str = "needle"):
    found, _, _ = studies.load_study(studies.locate(study, runs_dir=runs))
    return found.get_trials(deepcopy=False)


def test_depth_bins_split_the_needles_places_evenly():
    places = 40
    bins = depth_bin(torch.arange(places), places)
    assert bins.min() == 0 and bins.max() == DEPTH_BINS - 1
    assert torch.bincount(bins).tolist() == [places // DEPTH_BINS] * DEPTH_BINS
    assert torch.equal(bins, torch.sort(bins).values)  # deeper needles, later bins
    assert bin_labels()[0] == "0-12%" and bin_labels()[-1] == "88-100%"


def test_a_retrained_run_is_the_studys_and_its_counts_add_up_to_its_accuracy(needle_study):
    trials = trials_of(needle_study)
    attention = next(t for t in trials if t.user_attrs.get(REFERENCE) == "attention")
    candidate = next(t for t in trials if REFERENCE not in t.user_attrs)
    for trial in (attention, candidate):
        done = probe("needle", trial.number, runs_dir=needle_study, progress=False)
        assert [run.seed for run in done] == [0, 1]
        for run in done:
            scored = trial.user_attrs[f"run lr=0.01 seed={run.seed}"]
            # Bit for bit: the same accuracy on every slice as the study's run.
            assert run.reproduced and run.retrained == scored["per_slice"]
            assert run.step == max(scored["curve"], key=lambda point: point[1])[0]
            for key, size in (("seq_len=16", 24), ("seq_len=32", 40)):
                assert sum(run.queries[key]) == size  # one question a needle
                assert len(run.correct[key]) == DEPTH_BINS
                assert sum(run.correct[key]) / size == pytest.approx(run.retrained[key])
    saved = load_runs(needle_study / "needle" / "depth")
    assert [(r.trial, r.seed) for r in saved] == sorted(
        (t.number, s) for t in (attention, candidate) for s in (0, 1)
    )


def test_the_report_pools_seeds_and_names_a_run_that_differs(needle_study, tmp_path):
    out = tmp_path / "depth"
    trial = next(t for t in trials_of(needle_study) if REFERENCE not in t.user_attrs)
    done = probe("needle", trial.number, [0, 1], runs_dir=needle_study, out=out, progress=False)
    files = write_depth_report(out, "needle")
    text = Path(files["md"]).read_text(encoding="utf-8")
    assert Path(files["png"]).stat().st_size > 0
    pooled = sum(sum(r.correct["seq_len=32"]) for r in done) / 80
    longest = text.split("## T32")[1].splitlines()
    row = next(line for line in longest if line.startswith(f"| {done[0].label} |"))
    assert row.split(" | ")[2:4] == ["0/1", f"{pooled:.2f}"]
    assert "Every one of the 2 runs scored" in text
    # A run whose journal says otherwise is named, with both accuracies.
    path = out / f"trial{trial.number}_seed1.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["journal"]["seq_len=32"] = 0.123
    path.write_text(json.dumps(data), encoding="utf-8")
    assert not DepthRun.from_json(data).reproduced
    text = Path(write_depth_report(out, "needle")["md"]).read_text(encoding="utf-8")
    assert f"- trial {trial.number}, seed 1: T32 0.1230 in the journal" in text


def test_depth_refuses_what_it_cannot_retrain(needle_study, tmp_path):
    with pytest.raises(SearchError, match="trials 0 to 2, not 7"):
        probe("needle", 7, runs_dir=needle_study, progress=False)
    with pytest.raises(SearchError, match="no run of seed 5"):
        probe("needle", 0, [5], runs_dir=needle_study, progress=False)
    assert not (needle_study / "needle" / "depth").exists()  # nothing trained or written
    with pytest.raises(SearchError, match="no retrained run in"):
        write_depth_report(tmp_path, "needle")
    mqar = tmp_path / "mqar.yaml"
    mapping = yaml.safe_load(TINY.read_text(encoding="utf-8")) | {"name": "mqar_study"}
    mqar.write_text(yaml.safe_dump(mapping), encoding="utf-8")
    run_study(mqar, RunOptions(trials=1, runs_dir=needle_study, in_process=True))
    with pytest.raises(SearchError, match="needs a needle"):
        probe("mqar_study", 0, runs_dir=needle_study, progress=False)


def test_an_unfinished_trial_has_no_scored_runs(needle_study):
    study, _, _ = studies.load_study(studies.locate("needle", runs_dir=needle_study))
    study.enqueue_trial({"aggregation.kind": "none"})
    waiting = next(t for t in study.get_trials() if t.state == TrialState.WAITING)
    with pytest.raises(SearchError, match=f"trial {waiting.number} is not complete"):
        probe("needle", waiting.number, runs_dir=needle_study, progress=False)


def test_the_command_retrains_then_redraws(needle_study):
    runner = CliRunner()
    number = next(
        t.number for t in trials_of(needle_study) if t.user_attrs.get(REFERENCE) == "attention"
    )
    args = ["search", "depth", "needle", "--runs", str(needle_study)]
    result = runner.invoke(app, [*args, "--trial", str(number), "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert f"trial {number} seed 1 (attention (d_model 16))" in result.output
    assert "scored as in the journal" in result.output
    report = needle_study / "needle" / "depth" / "depth.md"
    assert f"| attention (d_model 16) | {number} | 1 |" in report.read_text(encoding="utf-8")
    report.unlink()
    redrawn = runner.invoke(app, [*args, "--json"])  # without --trial: redrawn only
    assert redrawn.exit_code == 0 and report.exists()
    assert json.loads(redrawn.output) == {
        "runs": [],
        "files": {"md": str(report), "png": str(report.with_suffix(".png"))},
    }
    empty = runner.invoke(app, [*args, "--out", str(needle_study / "none")])
    assert empty.exit_code == 2 and "no retrained run in" in empty.output


RESEARCH = REPO / "docs" / "research"
COMMITTED_DEPTH = sorted(p.parent.name for p in RESEARCH.glob("*_depth/depth.md"))


@pytest.mark.parametrize("folder", COMMITTED_DEPTH)
def test_a_committed_depth_report_is_what_its_committed_runs_draw(folder, tmp_path):
    # docs/research/recall_study.md cites <study>_depth/depth.md: a change of the report
    # or a run added must redraw it. Its runs each scored what the study's journal holds.
    committed = RESEARCH / folder
    runs = load_runs(committed)
    assert runs and all(run.reproduced for run in runs)
    trials = trials_of(RESEARCH / "runs", runs[0].study)
    for run in runs:  # the journal's accuracies they were checked against are the journal's
        lr, record = scored_run(trials[run.trial], run.seed)
        assert lr == run.lr and record["per_slice"] == run.journal
    for path in committed.glob("trial*_seed*.json"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    write_depth_report(tmp_path, runs[0].study)
    drawn = (tmp_path / "depth.md").read_text(encoding="utf-8")
    assert drawn == (committed / "depth.md").read_text(encoding="utf-8")
