"""Runs a study takes from another one instead of training them again: `mcgen search
SPACE --reuse-runs runs/OLD/journal.log`. The other study must have been run with the
same space but for train.full_budget_at_best (which only adds runs after the sweep), so
its (rate, seed) runs are the ones this study would train. They are checked before the
study is opened (a refused source writes nothing) and copied into it once; workers then
take a trial's from there (worker.done_runs).
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from mcgen.search.errors import SearchError
from mcgen.search.objective import runs_in
from mcgen.search.space import SearchSpace
from mcgen.search.trials import RUNS_OF

# Study user attributes: {runs_of: {run key: run JSON}}, and the journals they came from.
REUSED_RUNS = "reused_runs"
REUSED_FROM = "reused_from"
# Fields that may differ between the two spaces: they change no run of the sweep.
FREE_FIELDS = (("train", "full_budget_at_best"),)


def _comparable(space_json: dict) -> dict:
    space = json.loads(json.dumps(space_json))  # a copy
    for section, name in FREE_FIELDS:
        space.get(section, {}).pop(name, None)
    return space


def _source_study(journal: Path, name: str) -> optuna.Study:
    if not journal.is_file():
        raise SearchError(f"--reuse-runs {journal}: no such journal file")
    storage = JournalStorage(JournalFileBackend(str(journal)))
    names = optuna.get_all_study_names(storage)
    chosen = [n for n in names if n == name] or (names if len(names) == 1 else [])
    if not chosen:
        raise SearchError(
            f"--reuse-runs {journal}: holds studies {', '.join(names) or 'none'}, none named "
            f"{name!r}: give a journal with one study, or with one of that name"
        )
    return optuna.load_study(study_name=chosen[0], storage=storage)


def reusable_runs(journal: Path, name: str, space: SearchSpace) -> dict[str, dict[str, dict]]:
    """The finished runs of the study in `journal` (the one named `name`, or its only one),
    by whose they are (RUNS_OF): refused when its space differs from `space` in more than
    FREE_FIELDS."""
    source = _source_study(journal, name)
    stored = source.user_attrs.get("space_json")
    if stored is None:
        raise SearchError(
            f"--reuse-runs {journal}: study {source.study_name!r} was not made by mcgen search"
        )
    before = _comparable(json.loads(stored))
    now = _comparable(space.model_dump(mode="json"))
    if before != now:
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        raise SearchError(
            f"--reuse-runs {journal}: study {source.study_name!r} was run with another space "
            f"(it differs in: {', '.join(changed)}); its runs are not this study's"
        )
    found: dict[str, dict[str, dict]] = {}
    for trial in source.get_trials(deepcopy=False):
        owner = trial.user_attrs.get(RUNS_OF)
        if owner is not None:
            found.setdefault(owner, {}).update(runs_in(trial.user_attrs))
    return found


def take_runs(study: optuna.Study, runs: dict[str, dict[str, dict]], journal: Path) -> int:
    """Copy `runs` (reusable_runs of `journal`) into `study`, merged with any taken
    before; how many runs it now holds from other studies."""
    held = dict(study.user_attrs.get(REUSED_RUNS, {}))
    for owner, found in runs.items():
        held[owner] = {**held.get(owner, {}), **found}
    study.set_user_attr(REUSED_RUNS, held)
    sources = list(dict.fromkeys([*study.user_attrs.get(REUSED_FROM, []), str(journal)]))
    study.set_user_attr(REUSED_FROM, sources)
    return sum(len(found) for found in held.values())
