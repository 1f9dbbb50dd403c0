"""Where a candidate's runs stand between their evaluations, so that a run cut short goes
on from its last evaluation instead of from its first step.

A worker saves each running run's state (mcgen.mqar.train.Paused) after every evaluation
it goes on from, and the state where the plateau rule stopped a sweep run, which the
final run of the same rate and seed goes on from. On disk (a folder per candidate under
runs/<study>/checkpoints/), they outlive the worker: the next try of a trial whose worker
was killed takes them up, and each run gives what it would have given unbroken. Without
a folder only the plateau rule's states are kept, in memory, for this process (a mid-run
state there would die with the run it could resume). A candidate's states are removed
once it is scored.

Two trials may score one candidate at once (a sampler can draw it twice before either
ends): they share its folder. Each run is a function of its candidate, rate, seed and
step alone, so a state either of them saved is one the other would have reached; a
state the other removed is trained again. So writes go through a file of the writer's
own and an atomic rename, a state gone before it is read is none, and the folder itself
stays.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from mcgen.mqar.train import Evaluation, Paused

CHECKPOINTS = "checkpoints"  # the folder of a study's run states, in runs/<study>/


def candidate_checkpoints(run_dir: Path, runs_of: str) -> RunCheckpoints:
    """The states of one candidate's runs (trials.RUNS_OF names it) in a study's folder
    runs/<study>/: the worker writes them, `mcgen search status` reads them."""
    return RunCheckpoints(run_dir / CHECKPOINTS / folder_name(runs_of))


def folder_name(name: str) -> str:
    """A file-system-safe name for a candidate or a run: `attention d_model=24` ->
    `attention_d_model_24`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


class RunCheckpoints:
    """The saved states of one candidate's runs, by run key (objective.run_key,
    objective.final_key)."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder
        self._memory: dict[str, Paused] = {}

    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / f"{folder_name(key)}.pt"

    def save(self, key: str, state: Paused) -> None:
        if self.folder is None:
            self._memory[key] = state
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(key)
        partial = path.with_name(f"{path.stem}.{os.getpid()}.partial")  # this writer's own
        # Plain containers and tensors only, so that loading needs no pickled classes.
        saved = {**asdict(state), "history": [asdict(e) for e in state.history]}
        saved["batches"] = _packed(state.batches)
        torch.save(saved, partial)
        os.replace(partial, path)  # a worker killed mid-write leaves the last whole one

    def saver(self, key: str) -> Callable[[Paused], None] | None:
        """train's on_evaluation for a run: save where it stands, on disk only. In memory
        a state is gone with the process whose run it would resume, so none is kept."""
        return None if self.folder is None else functools.partial(self.save, key)

    def load(self, key: str) -> Paused | None:
        if self.folder is None:
            return self._memory.get(key)
        try:
            saved = torch.load(self._path(key), weights_only=True)
        except FileNotFoundError:  # never saved, or removed by the run's end
            return None
        saved["history"] = [Evaluation(**e) for e in saved["history"]]
        saved["batches"] = _unpacked(saved["batches"])
        return Paused(**saved)

    def steps(self) -> dict[str, int]:
        """The step of each saved state, by run key: where each run stands (mcgen search
        status). Read from the folder, so that another process may ask."""
        if self.folder is None:
            return {key: state.history[-1].step for key, state in self._memory.items()}
        found = {}
        for path in sorted(self.folder.glob("*.pt")):
            key = _run_key(path.stem)
            try:
                history = torch.load(path, weights_only=True)["history"]
            except FileNotFoundError:  # its run ended meanwhile
                continue
            if key is not None and history:
                found[key] = int(history[-1]["step"])
        return found

    def drop(self, key: str) -> None:
        if self.folder is None:
            self._memory.pop(key, None)
        else:
            self._path(key).unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove every state (the candidate is scored)."""
        self._memory.clear()
        if self.folder is not None:
            for path in self.folder.glob("*.pt"):
                path.unlink(missing_ok=True)


def _packed(batches: list[tuple[int, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """An epoch's batches (slice index, row indices) as three tensors. Each batch's rows
    are a view of one permutation of the slice, and torch.save writes a view's whole
    storage: saved as they are, an epoch of 2500 batches took 800 MB, not 320 kB."""
    return {
        "slices": torch.tensor([index for index, _ in batches], dtype=torch.long),
        "sizes": torch.tensor([len(rows) for _, rows in batches], dtype=torch.long),
        "rows": torch.cat([rows for _, rows in batches])
        if batches
        else torch.zeros(0, dtype=torch.long),
    }


def _unpacked(packed: dict[str, torch.Tensor]) -> list[tuple[int, torch.Tensor]]:
    pieces = packed["rows"].split(packed["sizes"].tolist())
    return [(int(i), rows) for i, rows in zip(packed["slices"].tolist(), pieces, strict=True)]


def _run_key(stem: str) -> str | None:
    """The run key a state's file name was made from (objective.run_key, final_key):
    `run_lr_0.001_seed_0` -> `run lr=0.001 seed=0`; None for any other file."""
    match = re.fullmatch(r"(run|final)_lr_(.+)_seed_(\d+)", stem)
    return None if match is None else f"{match[1]} lr={match[2]} seed={match[3]}"
