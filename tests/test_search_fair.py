"""Fair training in the search: the learning-rate sweep that widens until it brackets the
best rate, seeds with mean and spread, runs as resumable units; bundles and the grid
sampler; the needle probe as the search's task; the paper study's space."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
import yaml
from typer.testing import CliRunner

import mcgen.search.objective as objective
from mcgen.bench.results import cpu_name
from mcgen.build import build
from mcgen.cli import app
from mcgen.mqar.config import MQARDataConfig, MQARSlice, TrainConfig
from mcgen.mqar.data import load_data
from mcgen.mqar.model import MQARModel, attention_mixer, mcgen_mixer
from mcgen.mqar.train import Evaluation, Paused, train
from mcgen.search import checkpoints
from mcgen.search import status as status_module
from mcgen.search import study as studies
from mcgen.search.checkpoints import RunCheckpoints
from mcgen.search.errors import SearchError
from mcgen.search.grid.cells import Cell, load_cells
from mcgen.search.grid.cost import extrapolate
from mcgen.search.grid.plots import legend_entries
from mcgen.search.grid.tables import gains_table, rise_after, rise_table
from mcgen.search.local_run import RunOptions, run_study
from mcgen.search.objective import Run, evaluate, final_key, run_key, sweep
from mcgen.search.report import load_report, report_study
from mcgen.search.space import (
    SearchSpaceError,
    grid_points,
    grid_specs,
    parse_space,
    suggest_spec,
    widths,
)
from mcgen.search.status import TrialStatus, hours_left, study_status, trial_runs
from mcgen.search.study import locate, open_study
from mcgen.search.trials import GRID, REFERENCE, RETRY_OF, RUNS_OF
from mcgen.search.worker import run_worker
from mcgen.spec import parse_spec

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "search" / "tiny.yaml"
PAPER = REPO / "search" / "paper_cpu.yaml"


@pytest.fixture(autouse=True)
def data_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MCGEN_CACHE", str(tmp_path / "cache"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def tiny(**train) -> dict:
    mapping = yaml.safe_load(TINY.read_text(encoding="utf-8"))
    if train:
        del mapping["train"]["learning_rates"]
        mapping["train"].update(train)
    return mapping


def space_of(mapping: dict):
    return parse_space(yaml.safe_dump(mapping, sort_keys=False), "space.yaml")


def problems_of(mapping: dict) -> str:
    with pytest.raises(SearchSpaceError) as caught:
        space_of(mapping)
    return str(caught.value)


def fake_run(peak: float):
    """train_one for sweep: accuracy falls with the log-distance from `peak`, a little
    different per seed; records every (lr, seed) it trains."""
    trained: list[tuple[float, int]] = []

    def train_one(lr: float, seed: int) -> Run:
        trained.append((lr, seed))
        accuracy = max(0.0, 0.9 - 0.2 * abs(math.log10(lr / peak))) + 0.01 * seed
        per_slice = {FAKE_SLICE: accuracy}
        return Run(lr, seed, accuracy, per_slice, 10, "plateau", [(10, accuracy)], 0.1)

    return train_one, trained


FAKE_SLICE = "num_pairs=2,seq_len=16"  # the one test slice of fake_run's runs


# --- the learning-rate sweep ---------------------------------------------------------------


def test_a_best_rate_inside_the_range_is_bracketed_at_once():
    space = space_of(tiny(lr_sweep={"low": 1e-3, "high": 1e-2, "points": 3}, seeds=3))
    train_one, trained = fake_run(peak=3e-3)
    runs, best, status = sweep(space, train_one)
    assert status == "bracketed" and best == 0.003162
    assert sorted(trained) == sorted((lr, s) for lr in (0.001, 0.003162, 0.01) for s in (0, 1, 2))
    assert len(runs) == 9


def test_a_best_rate_at_an_end_widens_the_range_until_it_is_inside():
    space = space_of(tiny(lr_sweep={"low": 1e-3, "high": 1e-2, "points": 3}, seeds=2))
    train_one, trained = fake_run(peak=3e-4)
    runs, best, status = sweep(space, train_one)
    # 1e-3 was best: 3.162e-4 is added (same ratio below), best and now inside.
    assert status == "bracketed" and best == 0.0003162
    assert sorted({lr for lr, _ in trained}) == [0.0001, 0.0003162, 0.001, 0.003162, 0.01]
    assert len(trained) == 10  # no (rate, seed) trained twice
    # Upward too.
    train_one, trained = fake_run(peak=3e-2)
    _, best, status = sweep(space, train_one)
    assert status == "bracketed" and best == 0.03162


def test_a_sweep_that_runs_out_of_widenings_is_capped():
    space = space_of(
        tiny(lr_sweep={"low": 1e-3, "high": 1e-2, "points": 3, "max_widenings": 1}, seeds=1)
    )
    train_one, trained = fake_run(peak=1e-5)
    _, best, status = sweep(space, train_one)
    assert status == "capped" and best == 0.0003162 and len(trained) == 4


def test_a_fixed_list_is_never_widened():
    space = space_of(tiny())  # learning_rates [3e-3, 1e-2]
    train_one, trained = fake_run(peak=1e-5)
    _, best, status = sweep(space, train_one)
    assert status == "fixed" and best == 0.003 and len(trained) == 2


def test_runs_already_done_are_not_trained_again_and_new_ones_are_handed_over():
    space = space_of(tiny(lr_sweep={"low": 1e-3, "high": 1e-2, "points": 3}, seeds=2))
    train_one, trained = fake_run(peak=3e-3)
    first, _, _ = sweep(space, train_one)
    done = {run.key: run.to_json() for run in first[:4]}  # a killed study had these
    handed: dict[str, dict] = {}
    train_one, trained = fake_run(peak=3e-3)
    again, best, status = sweep(
        space, train_one, done_runs=done, on_run=lambda k, v: handed.setdefault(k, v)
    )
    assert len(trained) == 2 and set(handed) == {run_key(lr, s) for lr, s in trained}
    assert {r.key: r for r in again} == {r.key: r for r in first}  # the same result
    assert (best, status) == (0.003162, "bracketed")


def test_the_score_is_the_best_rates_mean_over_seeds_with_its_spread(tmp_path, monkeypatch):
    space = space_of(tiny(lr_sweep={"low": 1e-3, "high": 1e-2, "points": 3}, seeds=3))
    train_one, _ = fake_run(peak=0.003162)
    monkeypatch.setattr(
        objective, "_train_one", lambda space, d, f, data, lr, seed, **_: train_one(lr, seed)
    )
    mapping = suggest_spec(
        optuna.trial.FixedTrial({"aggregation.kind": "grm", "cache.segments.length": 4}), space
    )
    result = evaluate(mapping, space, tmp_path)
    # Seeds 0, 1, 2 at the peak: 0.90, 0.91, 0.92.
    assert result.accuracy == pytest.approx(0.91) and result.spread == pytest.approx(0.01)
    assert result.best_lr == 0.003162 and result.lr_status == "bracketed"
    assert result.per_slice == {FAKE_SLICE: pytest.approx(0.91)} and len(result.runs) == 9
    assert set(result.by_lr) == {0.001, 0.003162, 0.01}


PLATEAU = {"window": 2, "min_gain": 0.01, "min_steps": 2}


def fake_final_run(peak: float, *, budget_seeds: tuple[int, ...] = ()):
    """_train_one for evaluate: sweep runs as fake_run's, stopped by the plateau rule but
    for `budget_seeds`; a final run (no plateau rule) reaches 0.95 at the budget. Records
    every (lr, seed, final) it trains."""
    trained: list[tuple[float, int, bool]] = []

    def train(space, d_model, factory, data, lr, seed, *, final=False, **_) -> Run:
        trained.append((lr, seed, final))
        if final:
            return Run(lr, seed, 0.95, {"s": 0.95}, 4, "budget", [(4, 0.95)], 0.1, final=True)
        accuracy = max(0.0, 0.9 - 0.2 * abs(math.log10(lr / peak))) + 0.01 * seed
        stop = "budget" if seed in budget_seeds else "plateau"
        return Run(lr, seed, accuracy, {"s": accuracy}, 2, stop, [(2, accuracy)], 0.1)

    return train, trained


def test_the_best_rates_runs_a_plateau_stopped_are_trained_again_to_the_budget(
    tmp_path, monkeypatch
):
    sweep_ = {"low": 1e-3, "high": 1e-2, "points": 3}
    space = space_of(tiny(lr_sweep=sweep_, seeds=3, plateau=PLATEAU, full_budget_at_best=True))
    train, trained = fake_final_run(peak=0.003162, budget_seeds=(1,))
    monkeypatch.setattr(objective, "_train_one", train)
    mapping = suggest_spec(
        optuna.trial.FixedTrial({"aggregation.kind": "grm", "cache.segments.length": 4}), space
    )
    handed: dict[str, dict] = {}
    result = evaluate(mapping, space, tmp_path, on_run=lambda k, v: handed.setdefault(k, v))
    # The sweep picks the rate; seeds 0 and 2 stopped at a plateau there and go again.
    assert [t for t in trained if t[2]] == [(0.003162, 0, True), (0.003162, 2, True)]
    assert result.best_lr == 0.003162 and result.by_lr[0.003162] == pytest.approx(0.91)
    assert result.accuracy == pytest.approx((0.95 + 0.91 + 0.95) / 3)
    assert [r.key for r in result.runs if r.final] == [final_key(0.003162, s) for s in (0, 2)]
    assert set(handed) == {r.key for r in result.runs} and len(handed) == 11
    # Resumed with every run done: nothing is trained again, the same score.
    train, trained = fake_final_run(peak=0.003162, budget_seeds=(1,))
    monkeypatch.setattr(objective, "_train_one", train)
    again = evaluate(mapping, space, tmp_path / "again", done_runs=handed)
    assert trained == [] and again.accuracy == result.accuracy


def test_a_final_run_goes_on_from_where_the_plateau_stopped_its_sweep_run(tmp_path, monkeypatch):
    mapping = tiny()  # learning_rates [3e-3, 1e-2], 4 steps
    mapping["train"].update(
        eval_every=1,
        full_budget_at_best=True,
        plateau={"window": 1, "min_gain": 1.0, "min_steps": 2},
    )
    space = space_of(mapping)
    resumed_from: list[int | None] = []
    real_train = objective.train

    def recording_train(*args, resume=None, **kwargs):
        resumed_from.append(None if resume is None else resume.history[-1].step)
        return real_train(*args, resume=resume, **kwargs)

    monkeypatch.setattr(objective, "train", recording_train)
    spec = suggest_spec(
        optuna.trial.FixedTrial({"aggregation.kind": "grm", "cache.segments.length": 4}), space
    )
    result = evaluate(spec, space, tmp_path)
    # Two sweep runs, each stopped at step 2; the best rate's final run goes on from there.
    assert resumed_from == [None, None, 2]
    (final,) = [run for run in result.runs if run.final]
    (sweep_run,) = [r for r in result.runs if not r.final and r.lr == final.lr]
    assert sweep_run.steps == 2 and final.steps == 4
    assert final.curve[:2] == sweep_run.curve


def test_a_run_that_diverges_scores_zero_overall_and_on_each_slice(tmp_path, monkeypatch):
    mapping = tiny()  # learning_rates [3e-3, 1e-2], one seed, 4 steps
    mapping["train"].update(eval_every=2)
    space = space_of(mapping)
    real_train = objective.train

    def nan_after_the_first_evaluation(model, *args, **kwargs):
        training_steps = iter(range(1, 100))
        model.register_forward_hook(
            lambda m, i, out: out * math.nan if m.training and next(training_steps) > 2 else out
        )
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(objective, "train", nan_after_the_first_evaluation)
    spec = suggest_spec(
        optuna.trial.FixedTrial({"aggregation.kind": "grm", "cache.segments.length": 4}), space
    )
    result = evaluate(spec, space, tmp_path)
    assert [(r.stop_reason, r.steps, r.accuracy) for r in result.runs] == [("diverged", 4, 0.0)] * 2
    assert all(set(r.per_slice.values()) == {0.0} for r in result.runs)
    assert result.accuracy == 0.0 and set(result.per_slice.values()) == {0.0}
    # A journal written before kept a diverged run's best slices: read, they score 0 too.
    (run, _) = result.runs
    older = {**run.to_json(), "per_slice": {key: 0.5 for key in run.per_slice}}
    assert Run.from_json(older) == run
    assert Run.from_json({**older, "stop_reason": "budget"}).per_slice == older["per_slice"]


@pytest.mark.parametrize(
    ("eval_every", "cut_at"), [(3, 9), (4, 8)], ids=["mid-epoch", "at-an-epoch-end"]
)
def test_a_run_cut_after_an_evaluation_goes_on_from_its_checkpoint_on_disk(
    one_thread, tmp_path, eval_every, cut_at
):
    # A worker killed mid-run: its next try loads where the run stood at its last
    # evaluation (saved to disk by RunCheckpoints) and must give the unbroken run.
    config = MQARDataConfig(
        vocab_size=64,
        train=[MQARSlice(seq_len=32, num_pairs=4, num_examples=64)],  # 4 batches an epoch
        test=[MQARSlice(seq_len=32, num_pairs=4, num_examples=32)],
    )
    train_data, test_data = load_data(config, cache=False)
    budget = TrainConfig(max_steps=20, batch_size=16, eval_every=eval_every, warmup=4)

    def fresh() -> MQARModel:
        torch.manual_seed(0)
        return MQARModel(64, 32, 1, attention_mixer(32, 2))

    whole = fresh()
    saved = RunCheckpoints(tmp_path / "states")
    key = run_key(1e-3, 0)
    steps_saved: list[int] = []

    def keep(state: Paused) -> None:
        steps_saved.append(state.history[-1].step)
        if state.history[-1].step == cut_at:
            saved.save(key, state)

    straight = train(whole, train_data, test_data, budget, progress=False, on_evaluation=keep)
    # Every evaluation but the last (the run ends there) hands over where the run stands.
    assert steps_saved == list(range(eval_every, 20, eval_every))
    state = saved.load(key)
    assert state is not None and state.history == straight.history[: cut_at // eval_every]
    resumed_model = fresh()
    resumed = train(resumed_model, train_data, test_data, budget, progress=False, resume=state)
    assert resumed.steps == 20 and resumed.history == straight.history
    for a, b in zip(whole.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)
    saved.drop(key)
    assert saved.load(key) is None


def test_a_scoring_killed_mid_run_goes_on_from_that_runs_last_evaluation(tmp_path, monkeypatch):
    mapping = tiny()  # learning_rates [3e-3, 1e-2], one seed, 4 steps
    mapping["train"].update(eval_every=1)
    space = space_of(mapping)
    spec = suggest_spec(
        optuna.trial.FixedTrial({"aggregation.kind": "grm", "cache.segments.length": 4}), space
    )
    unbroken = evaluate(spec, space, tmp_path / "unbroken")
    real_train = objective.train

    def killed_at_step_2(*args, on_evaluation=None, **kwargs):
        def save_then_die(state: Paused) -> None:
            on_evaluation(state)
            if state.history[-1].step == 2:
                raise KeyboardInterrupt("killed")

        return real_train(*args, on_evaluation=save_then_die, **kwargs)

    monkeypatch.setattr(objective, "train", killed_at_step_2)
    folder = tmp_path / "checkpoints" / "candidate"
    handed: dict[str, dict] = {}
    with pytest.raises(KeyboardInterrupt):
        evaluate(spec, space, tmp_path / "first", on_run=handed.__setitem__,
                 checkpoints=RunCheckpoints(folder))  # fmt: skip
    assert handed == {} and [p.name for p in folder.iterdir()] == ["run_lr_0.003_seed_0.pt"]

    resumed_from: list[int | None] = []

    def recording_train(*args, resume=None, **kwargs):
        resumed_from.append(None if resume is None else resume.history[-1].step)
        return real_train(*args, resume=resume, **kwargs)

    monkeypatch.setattr(objective, "train", recording_train)
    again = evaluate(spec, space, tmp_path / "again", done_runs=handed, on_run=handed.__setitem__,
                     checkpoints=RunCheckpoints(folder))  # fmt: skip
    # The killed run goes on from step 2, the next one starts afresh; both as unbroken.
    assert resumed_from == [2, None]
    assert [(r.lr, r.steps, r.curve, r.accuracy) for r in again.runs] == [
        (r.lr, r.steps, r.curve, r.accuracy) for r in unbroken.runs
    ]
    assert list(folder.iterdir()) == []  # scored: its states are gone


def test_a_checkpoint_keeps_an_epochs_batches_in_the_size_of_their_rows(tmp_path):
    # Each batch's rows are a view of one permutation of its slice (mqar.train._epoch);
    # saved as views, every batch would write the whole permutation (800 MB an epoch in
    # the paper study). 4096 rows in 256 batches of 16: 32 kB of indices.
    permutation = torch.randperm(4096)
    batches = [(s % 2, permutation[s : s + 16]) for s in range(0, 4096, 16)]
    state = Paused(
        model={}, optimizer={}, schedule={}, generator=torch.Generator().get_state(),
        rng=torch.get_rng_state(), batches=batches, position=3,
        history=[Evaluation(1, 0.5, 0.25, {"s": 0.25})], seconds=1.0, eval_seconds=0.1,
    )  # fmt: skip
    saved = RunCheckpoints(tmp_path)
    saved.save("run", state)
    assert (tmp_path / "run.pt").stat().st_size < 100_000
    # Mid-run states are saved on disk only: in memory they would die with their run.
    assert saved.saver("run") is not None and RunCheckpoints().saver("run") is None
    loaded = saved.load("run")
    assert loaded is not None and len(loaded.batches) == 256
    for (index, rows), (index_back, rows_back) in zip(batches, loaded.batches, strict=True):
        assert index == index_back and torch.equal(rows, rows_back)


def test_the_status_shows_where_each_run_under_way_stands(tmp_path):
    # A running trial's worker saves its runs' states; `mcgen search status` reads them:
    # the runs under way and their steps, not the plateau's paused runs (finished, held).
    def state(step: int) -> Paused:
        return Paused(
            model={}, optimizer={}, schedule={}, generator=torch.Generator().get_state(),
            rng=torch.get_rng_state(), batches=[], position=0,
            history=[Evaluation(step, 0.5, 0.25, {"s": 0.25})], seconds=1.0, eval_seconds=0.1,
        )  # fmt: skip

    saved = checkpoints.candidate_checkpoints(tmp_path, "cand 1")
    saved.save(run_key(0.001, 0), state(2000))  # paused by the plateau rule: finished
    saved.save(final_key(0.001, 0), state(4500))  # its final run, under way
    saved.save(run_key(1e-05, 2), state(500))
    held = {run_key(0.001, 0): {}}
    under_way = status_module._under_way(held, tmp_path, "cand 1")
    assert under_way == {"final lr=0.001 seed=0": 4500, "run lr=1e-05 seed=2": 500}
    assert status_module._under_way(held, tmp_path, None) == {}


def test_two_tries_of_one_candidate_at_once_share_its_checkpoints(tmp_path, monkeypatch):
    # A sampler may draw one candidate twice before either trial ends: both save into
    # its folder, and one may finish (and clear it) while the other writes.
    folder = tmp_path / "candidate"
    first, second = RunCheckpoints(folder), RunCheckpoints(folder)
    state = Paused(
        model={"w": torch.ones(2)}, optimizer={}, schedule={},
        generator=torch.Generator().get_state(), rng=torch.get_rng_state(),
        batches=[(0, torch.arange(4))], position=1,
        history=[Evaluation(1, 0.5, 0.25, {"s": 0.25})], seconds=1.0, eval_seconds=0.1,
    )  # fmt: skip
    first.save("run", state)
    real_save = torch.save

    def cleared_meanwhile(obj, path):
        first.clear()  # the other try ends between this one's mkdir and its write
        real_save(obj, path)

    monkeypatch.setattr(checkpoints.torch, "save", cleared_meanwhile)
    second.save("final", state)
    monkeypatch.setattr(checkpoints.torch, "save", real_save)
    assert first.load("run") is None  # removed by the first try's end: trained again
    loaded = second.load("final")
    assert loaded is not None and loaded.history == state.history
    assert torch.equal(loaded.batches[0][1], torch.arange(4)) and loaded.position == 1
    second.clear()
    assert list(folder.iterdir()) == []  # no state, no partial file left


def test_without_full_budget_at_best_the_sweeps_runs_are_the_score(tmp_path, monkeypatch):
    space = space_of(tiny(lr_sweep={"low": 1e-3, "high": 1e-2}, seeds=2, plateau=PLATEAU))
    train, trained = fake_final_run(peak=0.003162)
    monkeypatch.setattr(objective, "_train_one", train)
    mapping = suggest_spec(
        optuna.trial.FixedTrial({"aggregation.kind": "grm", "cache.segments.length": 4}), space
    )
    result = evaluate(mapping, space, tmp_path)
    assert not any(final for _, _, final in trained)
    assert result.accuracy == pytest.approx(0.905)


def test_full_budget_at_best_needs_a_plateau_rule():
    message = problems_of(tiny(lr_sweep={"low": 1e-3, "high": 1e-2}, full_budget_at_best=True))
    assert "full_budget_at_best trains again the runs a plateau stopped" in message


def test_the_sweep_seeds_and_plateau_are_checked_in_the_file():
    message = problems_of(tiny(lr_sweep={"low": 1e-2, "high": 1e-3}))
    assert "train.lr_sweep: low 0.01 must be below high 0.001" in message
    mapping = tiny(lr_sweep={"low": 1e-3, "high": 1e-2})
    mapping["train"]["learning_rates"] = [1e-3]
    assert "give exactly one of learning_rates (a list) and lr_sweep" in problems_of(mapping)
    message = problems_of(tiny(lr_sweep={"low": 1e-3, "high": 1e-2}, plateau={"window": 0}))
    assert "train.plateau.window: Input should be greater than or equal to 1" in message


# --- resuming a killed trial ------------------------------------------------------------


def worker_killed_after_three_runs(tmp_path, monkeypatch):
    """A study of 3 trials (4 runs each, 0.1 s a run) whose worker was killed during its
    fourth run; then _train_one trains normally. Returns (its location, the runs trained)."""
    mapping = tiny(learning_rates=[3e-3, 1e-2], seeds=2)
    mapping["vary"] = {"aggregation.kind": ["grm"], "cache.segments.length": [4]}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(mapping, sort_keys=False), encoding="utf-8")
    location = locate("tiny", runs_dir=tmp_path / "runs")
    open_study(location, space_of(mapping), path.read_text(), target=3)
    train_one, trained = fake_run(peak=3e-3)

    def killed_after_three(space, d, f, data, lr, seed, **_):
        if len(trained) == 3:
            raise KeyboardInterrupt("killed")
        return train_one(lr, seed)

    monkeypatch.setattr(objective, "_train_one", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        run_worker(location, target=3, workdir=tmp_path / "work")
    monkeypatch.setattr(
        objective, "_train_one", lambda space, d, f, data, lr, seed, **_: train_one(lr, seed)
    )
    return location, trained


def test_a_retried_trial_trains_only_the_runs_its_killed_try_did_not_finish(tmp_path, monkeypatch):
    location, trained = worker_killed_after_three_runs(tmp_path, monkeypatch)
    killed = trained[:]
    result = run_worker(location, target=3, workdir=tmp_path / "work")
    assert result.reason == "done"
    study, _, _ = studies.load_study(location)
    trials = study.get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1 and len(objective.runs_in(failed[0].user_attrs)) == 3
    # The first reference trial was killed after 3 of its 4 runs: its retry trained one.
    retry = next(t for t in trials if t.user_attrs.get(RETRY_OF) == failed[0].number)
    assert retry.user_attrs[RUNS_OF] == failed[0].user_attrs[RUNS_OF]
    assert retry.state == optuna.trial.TrialState.COMPLETE
    # 3 trials x 4 runs, each trained exactly once over both attempts.
    assert len(killed) == 3 and len(trained) == 12
    assert all(len(objective.runs_in(t.user_attrs)) == 4 for t in trials if t.values)


def test_the_status_shows_a_killed_trials_runs_waiting_for_its_re_run(tmp_path, monkeypatch):
    location, _ = worker_killed_after_three_runs(tmp_path, monkeypatch)
    runs = tmp_path / "runs"
    status = study_status("tiny", runs_dir=runs)  # the worker enqueued the killed trial again
    assert (status.counts.failed, status.counts.waiting) == (1, 2)
    assert status.counts.failed_label == "1 failed and run again"  # interrupted, not broken
    killed = next(t for t in status.trials if t.state == "failed")
    retry = next(t for t in status.trials if t.retry_of == killed.number)
    assert killed.retried_as == retry.number and killed.label == retry.label
    assert (killed.runs, retry.runs, retry.state, retry.best_run) == (3, 3, "waiting", 0.91)
    others = [t for t in status.trials if t.number not in (killed.number, retry.number)]
    assert [(t.runs, t.state) for t in others] == [(0, "waiting")] and others[0].label
    assert status.run_hours == pytest.approx(3 * 0.1 / 3600)  # the 3 runs counted once
    shown = CliRunner().invoke(app, ["search", "status", "tiny", "--runs", str(runs)])
    assert shown.exit_code == 0 and f"run again as {retry.number}" in shown.stdout
    assert "1 failed and run again; its runs so far: 0.00 worker-hours" in shown.stdout
    assert status.hours_left is None and "left, roughly" not in shown.stdout
    # --trial lists one trial's runs: the waiting re-run's are its killed try's 3.
    label, held = trial_runs("tiny", retry.number, runs_dir=runs)
    assert label == retry.label and len(held) == 3 and max(r.accuracy for r in held) == 0.91
    args = ["search", "status", "tiny", "--runs", str(runs), "--trial", str(retry.number)]
    listed = CliRunner().invoke(app, [*args, "--json"])
    assert listed.exit_code == 0
    assert [r["seed"] for r in json.loads(listed.stdout)["runs"]] == [r.seed for r in held]
    shown = CliRunner().invoke(app, args)
    assert shown.exit_code == 0 and "3 finished runs" in shown.stdout
    assert "P2 T16" in shown.stdout and "0.910" in shown.stdout  # the slice's column
    missing = CliRunner().invoke(app, [*args[:-1], "9"])
    assert missing.exit_code == 2 and "study tiny has trials 0 to 2, not 9" in missing.output

    run_worker(location, target=3, workdir=tmp_path / "work")
    status = study_status("tiny", runs_dir=runs)
    done = [t for t in status.trials if t.state == "complete"]
    assert len(done) == 3 and all(t.runs == 4 and t.accuracy is not None for t in done)
    assert status.run_hours == pytest.approx(12 * 0.1 / 3600)
    result = CliRunner().invoke(app, ["search", "status", "tiny", "--runs", str(runs), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["counts"]["complete"] == 3
    # A sampler's trial caught before its worker wrote its spec (nothing drawn yet): shown
    # running with no runs, not an error.
    study, _, _ = studies.load_study(location)
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING))
    drawing = study_status("tiny", runs_dir=runs).trials[-1]
    assert (drawing.state, drawing.runs, drawing.label) == ("running", 0, "")


def test_what_is_left_is_costed_at_the_complete_trials_of_the_same_base_and_width():
    def status(number, state, run_seconds, run_steps=0):
        return TrialStatus(
            number, "", state, 0, 0, None, run_seconds, run_steps, None, None, None, None, None
        )

    def trial(seconds=0.0):
        return SimpleNamespace(user_attrs={"seconds": seconds})

    rows = [
        # complete: swla d24 at 100 and 300 s (its trial's seconds or its runs', the larger)
        (trial(100.0), status(0, "complete", 90.0), ("swla", 24)),
        (trial(250.0), status(1, "complete", 300.0), ("swla", 24)),
        (trial(1000.0), status(2, "complete", 800.0, 4000), ("titans", 48)),  # 0.2 s a step
        # unfinished: swla d24 holding 50 s of runs; dla d48 (no dla done: titans' width,
        # and no step of its own to scale it by); delta d48, whose steps take half of
        # titans' (0.1 s), at half of titans' cost less its 50 s; gated delta d96 (nothing
        # of its width: the mean of all, 467 s)
        (trial(), status(3, "running", 50.0), ("swla", 24)),
        (trial(), status(4, "waiting", 0.0), ("dla", 48)),
        (trial(), status(8, "running", 50.0, 500), ("delta", 48)),
        (trial(), status(5, "waiting", 600.0), ("gated_delta", 96)),  # held more: nothing left
        (trial(), status(6, "failed", 0.0), ("swla", 24)),  # its re-run is the one counted
        (trial(), status(7, "running", 0.0), None),  # nothing drawn yet: the mean of all
    ]
    trials, statuses, kinds = map(list, zip(*rows, strict=True))
    expected = 200 - 50 + 1000 + (500 - 50) + 1400 / 3
    assert hours_left(trials, statuses, kinds) == pytest.approx(expected / 3600)
    assert hours_left(trials[3:], statuses[3:], kinds[3:]) is None  # nothing to cost it at


# --- bundles and the grid ----------------------------------------------------------------


def grid_mapping() -> dict:
    mapping = tiny()
    mapping["base"] = {
        "memory": {"recurrence": "linear"},
        "cache": {"init": "checkpoint"},
        "compute": {"chunk_size": 4},
    }
    mapping["vary"] = {"memory.recurrence": ["linear", "delta"]}
    mapping["bundles"] = {
        "variant": {
            "base": {"aggregation": {"kind": "none"}, "cache": {"segments": {"kind": "none"}}},
            "ssc": {
                "aggregation": {"kind": "ssc", "top_k": 1},
                "cache": {"segments": {"kind": "constant", "length": 8}},
            },
        },
        "width": {
            "w16": {"layer": {"d_model": 16}, "memory": {"heads": 2, "key_dim": 8, "value_dim": 8}},
            "w32": {"layer": {"d_model": 32}, "memory": {"heads": 4, "key_dim": 8, "value_dim": 8}},
        },
    }
    mapping["sampler"] = "grid"
    del mapping["base"]["memory"]
    return mapping


def test_bundles_set_their_fields_together_and_the_grid_lists_each_candidate_once():
    space = space_of(grid_mapping())
    points = grid_points(space)
    assert len(points) == 8 and widths(space) == [16, 32]
    specs = [suggest_spec(optuna.trial.FixedTrial(p), space) for p in points]
    assert len({s["name"] for s in specs}) == 8
    for params, spec in zip(points, specs, strict=True):
        assert set(params) == {"variant", "width", "memory.recurrence"}
        parsed = parse_spec(yaml.safe_dump(spec))
        assert parsed.memory.recurrence == params["memory.recurrence"]
        assert parsed.aggregation.kind == {"base": "none", "ssc": "ssc"}[params["variant"]]
        assert (parsed.layer.d_model, parsed.memory.heads) == {
            "w16": (16, 2),
            "w32": (32, 4),
        }[params["width"]]


def test_a_grid_study_enqueues_every_point_and_attention_at_every_width(tmp_path):
    space = space_of(grid_mapping())
    location = locate("grid", runs_dir=tmp_path)
    study, _ = open_study(location, space, "", target=10)
    waiting = study.get_trials(deepcopy=False)
    references = [t.user_attrs.get(REFERENCE) for t in waiting]
    assert references.count("attention") == 2 and "base_rnn" not in references
    assert sum(GRID in t.user_attrs for t in waiting) == 8
    assert study.user_attrs["grid_points"] == 8
    # Opening it again enqueues nothing more.
    study, _ = open_study(location, space, "", target=10)
    assert len(study.get_trials(deepcopy=False)) == 10


def test_the_status_names_the_grid_points_still_waiting(tmp_path):
    text = yaml.safe_dump(grid_mapping(), sort_keys=False)
    open_study(locate("grid", runs_dir=tmp_path), space_of(grid_mapping()), text, target=10)
    status = study_status("grid", runs_dir=tmp_path)
    assert status.counts.waiting == 10 and status.run_hours == 0
    labels = [t.label for t in status.trials]
    assert "variant=ssc width=w32 recurrence=delta" in labels
    assert "attention (d_model 16)" in labels and len(set(labels)) == 10


def test_bundle_mistakes_are_named():
    mapping = grid_mapping()
    mapping["bundles"]["variant"]["ssc"]["aggregation"]["topk"] = 1
    assert "bundles.variant.ssc.aggregation.topk: unknown spec field" in problems_of(mapping)
    mapping = grid_mapping()
    mapping["bundles"]["width"]["w16"]["memory"]["recurrence"] = "linear"
    assert "bundles.width.w16.memory.recurrence: also set in vary" in problems_of(mapping)
    mapping = grid_mapping()
    mapping["base"]["layer"] = {"d_model": 16}
    assert "bundles.width.w16.layer.d_model: also set in base" in problems_of(mapping)


def test_a_recurrence_the_spec_does_not_know_is_refused_by_the_specs_own_rule():
    mapping = grid_mapping()
    mapping["vary"]["memory.recurrence"] = ["linear", "lstm"]
    message = problems_of(mapping)
    assert "vary.memory.recurrence.1: 'lstm' gives an invalid spec: memory.recurrence:" in message


# --- the needle probe as the search's task ---------------------------------------------------


def niah_mapping() -> dict:
    mapping = tiny()
    del mapping["mqar"]
    mapping["niah"] = {
        "vocab_size": 32,
        "train": [{"seq_len": 16, "num_examples": 64}],
        "test": [{"seq_len": 16, "num_examples": 32}, {"seq_len": 32, "num_examples": 32}],
    }
    return mapping


def test_the_needle_probe_is_a_task_the_search_can_score(tmp_path):
    space = space_of(niah_mapping())
    assert space.task == "niah" and objective.eval_length(space) == 32
    mapping = suggest_spec(
        optuna.trial.FixedTrial({"aggregation.kind": "grm", "cache.segments.length": 4}), space
    )
    result = evaluate(mapping, space, tmp_path)
    assert set(result.per_slice) == {"seq_len=16", "seq_len=32"}
    assert 0.0 <= result.accuracy <= 1.0 and result.cost > 0
    # Each run records what trained it: here the CPU, a worker on one of its threads.
    assert {run.device for run in result.runs} == {f"{cpu_name()}, one thread a worker"}


def test_a_space_gives_exactly_one_task():
    both = niah_mapping()
    both["mqar"] = tiny()["mqar"]
    assert "give exactly one task: an mqar or a niah section" in problems_of(both)
    neither = niah_mapping()
    del neither["niah"]
    assert "give exactly one task" in problems_of(neither)


# --- the paper study's space ----------------------------------------------------------------


def test_the_paper_space_covers_every_base_variant_and_width():
    space = parse_space(PAPER.read_text(encoding="utf-8"), str(PAPER))
    points = grid_points(space)
    combos = {(p["memory.recurrence"], p["variant"], p["width"]) for p in points}
    assert combos == {
        (r, v, w)
        for r in ("titans", "dla", "swla", "gated_delta")
        for v in ("base", "grm", "ssc", "log")
        for w in ("d24", "d48")
    }
    # The three seeds at least: a cell reports a mean and a spread.
    assert space.train.seeds >= 3 and space.train.lr_sweep is not None
    assert space.train.plateau is not None and widths(space) == [24, 48]


@pytest.mark.slow
def test_every_candidate_of_the_paper_space_builds_and_trains_a_step(tmp_path):
    """Every (base, variant, width) of search/paper_cpu.yaml, and attention of each width:
    built from its spec, one training step on tiny MQAR, a finite loss."""
    space = parse_space(PAPER.read_text(encoding="utf-8"), str(PAPER))
    data = MQARDataConfig(
        vocab_size=space.data.vocab_size,
        train=[MQARSlice(seq_len=32, num_pairs=4, num_examples=4)],
        test=[MQARSlice(seq_len=32, num_pairs=4, num_examples=2)],
    )
    train_data, test_data = load_data(data, cache=False)
    config = TrainConfig(max_steps=1, batch_size=4, layers=space.train.layers)
    factories = [(w, attention_mixer(w, 2)) for w in widths(space)]
    for params in grid_points(space):
        mapping = suggest_spec(optuna.trial.FixedTrial(params), space)
        spec_path = tmp_path / f"{mapping['name']}.yaml"
        spec_path.write_text(yaml.safe_dump(mapping, sort_keys=False), encoding="utf-8")
        built = build(spec_path, tmp_path / "generated")
        factories.append((built.spec.layer.d_model, mcgen_mixer(built.path)))
    for width, factory in factories:
        torch.manual_seed(0)
        model = MQARModel(space.data.vocab_size, width, space.train.layers, factory)
        result = train(model, train_data, test_data, config, progress=False)
        assert result.steps == 1 and math.isfinite(result.history[-1].loss)
    assert len(factories) == 32 + 2  # 4 bases x 4 variants x 2 widths, attention x 2


# --- the report of a grid --------------------------------------------------------------------


def fake_train(space, d_model, factory, data, lr, seed, **_) -> Run:
    """Accuracy grows with width and peaks at lr 1e-2; 10 steps in 1 s, 0.2 s of it two
    evaluations."""
    accuracy = 0.5 + d_model / 100 - 0.1 * abs(math.log10(lr / 1e-2)) + 0.01 * seed
    return Run(lr, seed, accuracy, {"num_pairs=2,seq_len=16": accuracy}, 10, "plateau",
               [(5, accuracy / 2), (10, accuracy)], 1.0, 0.2,
               device="CPU of seed 0" if seed == 0 else "CPU of seed 1")  # fmt: skip


def test_the_grid_report_gives_each_cell_its_mean_and_spread_plots_and_cost(tmp_path, monkeypatch):
    monkeypatch.setattr(objective, "_train_one", fake_train)
    mapping = grid_mapping()
    mapping["train"].update(seeds=2)
    mapping["mqar"]["random_non_queries"] = False  # two values to guess among: 0.5
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(mapping, sort_keys=False), encoding="utf-8")
    runs = tmp_path / "runs"
    summary = run_study(path, RunOptions(trials=10, runs_dir=runs, in_process=True))
    assert summary.finished and summary.counts.complete == 10
    report = report_study("tiny", runs_dir=runs, extrapolate=path)
    text = Path(report.files["grid_md"]).read_text(encoding="utf-8")
    for key in ("accuracy_width", "accuracy_state", "curves"):
        assert Path(report.files[key]).read_bytes().startswith(b"\x89PNG")
    # lr 1e-2 is best (learning_rates [3e-3, 1e-2]); seeds 0 and 1 give +0.00, +0.01.
    row = (
        "| delta | ssc | 32 | 0.825 +- 0.007 | 2 | 0.82 / 0.83 | 0.825 | 0.01 | fixed | plateau 2 |"
    )
    assert row in text
    row = "| attention | - | 16 | 0.665 +- 0.007 | 2 | 0.66 / 0.67 | 0.665 | 0.01 | fixed |"
    assert row in text
    assert "mcgen search report tiny --extrapolate" in text
    # The fake scores ssc as its base RNN: no gain, and no seed above the base's best.
    assert "| delta | 32 | 0.825 | ssc | 0.825 | +0.000 +- 0.007 | no | 0 of 2 |" in text
    assert "## Cost of" in text and "worker-hours" in text
    # Each run records what trained it; the report names them all beside the cost.
    assert "Measured on: CPU of seed 0; CPU of seed 1." in text
    assert "Guessing among the value tokens seen before each query scores 0.500" in text


def test_a_cell_counts_a_diverged_run_at_zero_on_each_slice_though_older_journals_did_not(
    tmp_path, monkeypatch
):
    def older_worker(space, d_model, factory, data, lr, seed, **_) -> Run:
        run = fake_train(space, d_model, factory, data, lr, seed)
        # Scored 0, its slices kept at their best, as workers wrote them before.
        return replace(run, accuracy=0.0, stop_reason="diverged") if seed == 1 else run

    monkeypatch.setattr(objective, "_train_one", older_worker)
    mapping = grid_mapping()
    mapping["train"].update(seeds=2)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(mapping, sort_keys=False), encoding="utf-8")
    runs = tmp_path / "runs"
    assert run_study(path, RunOptions(trials=10, runs_dir=runs, in_process=True)).finished
    _, study = load_report("tiny", runs_dir=runs)
    cells = load_cells(study, parse_space(study.user_attrs["space_yaml"], "grid.yaml"))
    assert len(cells) == 10
    for cell in cells:  # one test slice: its mean is the cell's accuracy, seed 1 at 0
        (key,) = cell.per_slice
        assert cell.slice_accuracies(key)[1] == 0.0
        assert cell.per_slice[key] == pytest.approx(cell.accuracy) and cell.accuracy > 0.2


def test_one_legend_names_every_variant_drawn_in_any_panel():
    # The last panel's base may lack a variant that another base has (titans had no
    # logarithmic-segments cell yet): the legend there must still name it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (dla, titans) = plt.subplots(1, 2)
    for name in ("base", "grm", "log"):
        dla.plot([0, 1], [0, 1], label=name)
    titans.plot([0, 1], [1, 0], label="base")
    titans.plot([0, 1], [1, 1], label="attention")
    handles, labels = legend_entries([dla, titans])
    plt.close(figure)
    assert labels == ["base", "grm", "log", "attention"]
    assert handles[0].get_ydata().tolist() == [0, 1]  # the first drawn stands for its label


def test_a_one_width_grid_is_drawn_by_test_slice_with_each_slices_spread(tmp_path, monkeypatch):
    short, long = "num_pairs=2,seq_len=16", "num_pairs=2,seq_len=32"

    def by_length(space, d_model, factory, data, lr, seed, **_) -> Run:
        # Seeds 0 and 1 score 0.6 and 0.8 at 16 tokens, 0.2 and 0.6 at 32.
        per_slice = {short: 0.6 + 0.2 * seed, long: 0.2 + 0.4 * seed}
        return Run(lr, seed, 0.5, per_slice, 10, "budget", [(10, 0.5)], 1.0, 0.2)

    monkeypatch.setattr(objective, "_train_one", by_length)
    mapping = grid_mapping()
    del mapping["bundles"]["width"]["w32"]
    mapping["train"].update(seeds=2)
    mapping["mqar"]["test"].append({**mapping["mqar"]["test"][0], "seq_len": 32})
    path = tmp_path / "narrow.yaml"
    path.write_text(yaml.safe_dump(mapping, sort_keys=False), encoding="utf-8")
    runs = tmp_path / "runs"
    assert run_study(path, RunOptions(trials=5, runs_dir=runs, in_process=True)).finished
    report = report_study("tiny", runs_dir=runs)
    # One width has nothing to draw against; two slices are drawn side by side.
    assert "accuracy_width" not in report.files
    assert Path(report.files["accuracy_slice"]).read_bytes().startswith(b"\x89PNG")
    text = Path(report.files["grid_md"]).read_text(encoding="utf-8")
    # Each slice's mean over the two seeds, with their spread (sd of 0.6, 0.8 is 0.141).
    assert "| 0.700 +- 0.141 | 0.400 +- 0.283 |" in text
    assert "## Accuracy on each test slice" in text and "## Accuracy against width" not in text


def test_a_study_takes_another_ones_runs_and_trains_only_the_final_ones(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    mapping = grid_mapping()
    mapping["train"].update(plateau=PLATEAU)
    first = tmp_path / "first.yaml"
    first.write_text(yaml.safe_dump(mapping, sort_keys=False), encoding="utf-8")
    train, trained = fake_final_run(peak=1e-2)
    monkeypatch.setattr(objective, "_train_one", train)
    run_study(first, RunOptions(trials=10, runs_dir=runs, in_process=True))
    assert len(trained) == 20 and not any(final for _, _, final in trained)  # 10 cells x 2 rates

    mapping["train"].update(full_budget_at_best=True)
    second = tmp_path / "second.yaml"
    second.write_text(yaml.safe_dump(mapping, sort_keys=False), encoding="utf-8")
    journal = runs / "tiny" / "journal.log"
    train, trained = fake_final_run(peak=1e-2)
    monkeypatch.setattr(objective, "_train_one", train)
    options = RunOptions(
        trials=10, study="final", runs_dir=runs, in_process=True, reuse_runs=journal
    )
    summary = run_study(second, options)
    assert summary.finished and summary.reused == 20
    # Only each cell's final run (its best rate's one seed, stopped by the plateau rule).
    assert trained == [(0.01, 0, True)] * 10
    report = report_study("final", runs_dir=runs)
    text = Path(report.files["grid_md"]).read_text(encoding="utf-8")
    assert "| delta | ssc | 32 | 0.950 | 1 | 0.95 | 0.900 | 0.01 | fixed | budget 1 |" in text

    # A source run with another space is refused before anything is written.
    mapping["train"].update(steps=5)
    third = tmp_path / "third.yaml"
    third.write_text(yaml.safe_dump(mapping, sort_keys=False), encoding="utf-8")
    bad = RunOptions(trials=10, study="other", runs_dir=runs, in_process=True, reuse_runs=journal)
    with pytest.raises(SearchError, match=r"another space \(it differs in: train\)"):
        run_study(third, bad)
    assert not (runs / "other").exists()


def test_the_extrapolation_scales_the_measured_step_and_evaluation_times():
    space = space_of(grid_mapping())
    cells = []
    for params, spec in grid_specs(space):
        runs = [fake_train(space, 16, None, None, 1e-2, 0)]
        variant = params["variant"]
        key = (spec["memory"]["recurrence"], variant, spec["layer"]["d_model"])
        cells.append(Cell(0, *key, 0.5, 0.0, 1e-2, "fixed", 1.0, runs, 1.0))
    cells += [Cell(0, "attention", "-", w, 0.9, 0.0, 1e-2, "fixed", 1.0, runs, 1.0)
              for w in (16, 32)]  # fmt: skip
    target = grid_mapping()
    target["train"] = {
        "lr_sweep": {"low": 1e-3, "high": 1e-2, "points": 3, "max_widenings": 2},
        "seeds": 3,
        "steps": 1000,
        "eval_every": 100,
        "plateau": {"window": 200, "min_steps": 400},
    }
    estimate = extrapolate(cells, space_of(target))
    # 0.08 s a step and 0.1 s an evaluation: a run of 1000 steps is 80 + 10 * 0.1 = 81 s.
    assert estimate.candidates == 10 and estimate.runs_first == 9 and estimate.runs_widest == 15
    assert estimate.budget_s == pytest.approx(10 * 9 * 81)
    assert estimate.widest_s == pytest.approx(10 * 15 * 81)
    assert estimate.floor_s == pytest.approx(10 * 9 * (400 * 0.08 + 4 * 0.1))
    # The best rate's 3 runs go on from step 400 to the budget, at the floor.
    target["train"]["full_budget_at_best"] = True
    final = extrapolate(cells, space_of(target))
    assert final.floor_s == pytest.approx(estimate.floor_s + 10 * 3 * (81 - 32.4))
    assert final.budget_s == estimate.budget_s
    with pytest.raises(studies.SearchError, match="no timing for 2 of"):
        extrapolate(cells[:-2], space_of(target))


def cell_of(base: str, variant: str, seeds: list[float], *, base_rnn: bool = False) -> Cell:
    runs = [Run(1e-2, i, a, {}, 100, "budget", [(100, a)], 1.0) for i, a in enumerate(seeds)]
    spread = statistics.stdev(seeds) if len(seeds) > 1 else 0.0  # as a one-seed cell has
    mean = sum(seeds) / len(seeds)
    return Cell(0, base, variant, 24, mean, spread, 1e-2, "fixed", 1.0, runs, 1.0, base_rnn)


def test_the_gain_of_each_variant_is_taken_over_its_own_base_rnn_with_its_error():
    cells = [
        cell_of("titans", "base", [0.1, 0.2, 0.3], base_rnn=True),
        cell_of("titans", "grm", [0.6, 0.7, 0.8]),
        cell_of("titans", "ssc", [0.1, 0.35, 0.2]),
        cell_of("dla", "grm", [0.5, 0.5, 0.5]),  # no base RNN of dla: no row
        cell_of("attention", "-", [0.99, 0.99, 0.98]),
    ]
    header, rows = gains_table(cells)
    assert header[:6] == ["base", "width", "base RNN", "variant", "accuracy", "gain (+- s.e.)"]
    # sqrt(0.1^2 / 3 + 0.1^2 / 3) = 0.082; ssc's std 0.126 makes its s.e. 0.093.
    assert rows == [
        ["titans", "24", "0.200", "grm", "0.700", "+0.500 +- 0.082", "yes", "3 of 3"],
        ["titans", "24", "0.200", "ssc", "0.217", "+0.017 +- 0.093", "no", "1 of 3"],
    ]


def test_with_several_test_slices_the_gain_is_given_on_each():
    short, long = "seq_len=64", "seq_len=1024"

    def cell(variant: str, at_short: list[float], at_long: list[float]) -> Cell:
        runs = [
            Run(1e-2, i, (s + g) / 2, {short: s, long: g}, 100, "budget", [(100, 0.5)], 1.0)
            for i, (s, g) in enumerate(zip(at_short, at_long, strict=True))
        ]
        pooled = [run.accuracy for run in runs]
        mean, spread = statistics.mean(pooled), statistics.stdev(pooled)
        plain = variant == "base"
        return Cell(0, "swla", variant, 24, mean, spread, 1e-2, "fixed", 1.0, runs, 1.0, plain)

    # The cache keeps the needle at 1024 tokens that the base RNN loses; equal at 64.
    cells = [
        cell("base", [0.9, 1.0, 0.95], [0.1, 0.2, 0.3]),
        cell("grm", [0.9, 1.0, 0.95], [0.5, 0.6, 0.7]),
    ]
    header, rows = gains_table(cells, [short, long])
    assert header[-2:] == ["gain T64", "gain T1024"]
    # Each side's sd is 0.05 at 64 and 0.1 at 1024: s.e. sqrt(2 * 0.05^2 / 3) = 0.041 and 0.082.
    assert rows[0][-2:] == ["+0.000 +- 0.041", "+0.400 +- 0.082"]
    assert rows[0][5] == "+0.200 +- 0.054"  # pooled over both: half the gain at 1024
    # One slice: no per-slice column (it would repeat the pooled gain).
    assert len(gains_table(cells, [short])[0]) == len(header) - 2


def test_a_gain_over_one_seed_claims_no_error():
    # A pilot's one seed has std 0: an s.e. of 0 would make every gain "> 2 s.e.".
    one = [cell_of("dla", "base", [0.010], base_rnn=True), cell_of("dla", "grm", [0.008])]
    _, rows = gains_table(one)
    assert rows == [
        ["dla", "24", "0.010", "grm", "0.008", "-0.002 (one seed: no s.e.)", "-", "0 of 1"]
    ]


def test_the_rise_table_shows_what_runs_at_the_budget_gained_in_its_last_quarter():
    def run(seed, curve, stop="budget"):
        return Run(1e-2, seed, max(a for _, a in curve), {}, curve[-1][0], stop, curve, 1.0)

    rising = [(2000, 0.2), (6000, 0.5), (7000, 0.45), (8000, 0.7)]
    flat = [(2000, 0.6), (6000, 0.8), (8000, 0.79)]  # its best came before step 6000
    met = [(2000, 0.5), (4000, 0.99)]  # met the target: nothing left to gain
    runs = [run(0, rising), run(1, flat), run(2, met, "target")]
    cell = Cell(3, "swla", "grm", 24, 0.83, 0.1, 1e-2, "bracketed", 1.0, runs, 9.0)
    done = [run(0, met, "target")]
    reached = Cell(4, "attention", "-", 24, 0.99, 0.0, 1e-2, "bracketed", 1.0, done, 1.0)
    assert rise_after(runs[0], 6000) == pytest.approx(0.2)
    assert rise_after(runs[1], 6000) == 0.0
    assert rise_after(runs[2], 6000) is None  # it ended at step 4000
    header, rows = rise_table([cell, reached], budget=8000)
    assert header[3:] == ["runs at the budget", "rise after step 6000 (by seed)", "largest"]
    assert rows == [["swla", "grm", "24", "2 of 3", "+0.20 / +0.00", "+0.200"]]


def test_a_cells_cost_counts_the_runs_it_took_from_another_study():
    runs = [Run(1e-2, seed, 0.5, {}, 100, "budget", [(100, 0.5)], 40.0) for seed in range(3)]
    trained = Cell(0, "delta", "grm", 16, 0.5, 0.0, 1e-2, "fixed", 1.0, runs, 130.0)
    assert trained.worker_seconds == 130.0  # its runs and its build
    # A trial that took its three runs (3 x 40 s) from another study, in a second.
    reused = Cell(0, "delta", "grm", 16, 0.5, 0.0, 1e-2, "fixed", 1.0, runs, 1.0)
    assert reused.worker_seconds == 120.0


@pytest.mark.parametrize(
    ("study", "pilot_name"),
    [
        ("paper_cpu", "paper_pilot"),
        ("paper_niah_cpu", "paper_niah_pilot"),
        ("paper_niah_deep_cpu", "paper_niah_pilot"),
    ],
)
def test_the_pilot_times_the_studys_own_candidates_data_and_model(study, pilot_name):
    study_path = REPO / "search" / f"{study}.yaml"
    paper = parse_space(study_path.read_text(encoding="utf-8"), str(study_path))
    pilot_path = REPO / "search" / f"{pilot_name}.yaml"
    pilot = parse_space(pilot_path.read_text(encoding="utf-8"), str(pilot_path))
    timed = [
        {**spec, "name": spec["name"].replace(pilot_name, "")} for _, spec in grid_specs(pilot)
    ]
    drawn = [{**spec, "name": spec["name"].replace(study, "")} for _, spec in grid_specs(paper)]
    assert drawn and all(spec in timed for spec in drawn)
    assert pilot.task == paper.task and widths(pilot) == widths(paper)
    assert (pilot.mqar, pilot.niah) == (paper.mqar, paper.niah)
    same = ("batch_size", "layers")
    assert {k: getattr(pilot.train, k) for k in same} == {k: getattr(paper.train, k) for k in same}


def test_the_long_study_is_the_paper_studys_narrow_matrix_memories_at_twice_the_budget():
    paper = parse_space(PAPER.read_text(encoding="utf-8"), str(PAPER))
    path = REPO / "search" / "paper_cpu_long.yaml"
    long = parse_space(path.read_text(encoding="utf-8"), str(path))
    narrow = [
        {**spec, "name": spec["name"].replace("paper_cpu", "")}
        for params, spec in grid_specs(paper)
        if params["width"] == "d24" and params["memory.recurrence"] in ("swla", "gated_delta")
    ]
    drawn = [
        {**spec, "name": spec["name"].replace("paper_cpu_long", "")} for _, spec in grid_specs(long)
    ]
    assert len(drawn) == 8 and drawn == narrow
    assert long.mqar == paper.mqar
    assert long.train == paper.train.model_copy(update={"steps": 2 * paper.train.steps})


def test_the_needle_studies_split_the_paper_studys_narrow_candidates_and_training():
    """The matrix memories' needle study and the deep memories' one draw, between them,
    each candidate of width 24 of the MQAR study once, with its training."""
    paper = parse_space(PAPER.read_text(encoding="utf-8"), str(PAPER))
    narrow = [p for p, _ in grid_specs(paper) if p["width"] == "d24"]
    halves = {"paper_niah_cpu": ("swla", "gated_delta"), "paper_niah_deep_cpu": ("titans", "dla")}
    for name, bases in halves.items():
        path = REPO / "search" / f"{name}.yaml"
        niah = parse_space(path.read_text(encoding="utf-8"), str(path))
        assert niah.task == "niah" and niah.train == paper.train
        drawn = [p for p, _ in grid_specs(niah)]
        assert len(drawn) == 8 and drawn == [p for p in narrow if p["memory.recurrence"] in bases]
        assert widths(niah) == [24]
        assert objective.eval_length(niah) > niah.data.train[0].seq_len
