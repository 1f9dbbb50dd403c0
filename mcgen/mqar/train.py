"""Train a recall model (MQAR, or any task laid out the same way: the needle probe of
mcgen.niah): AdamW, linear warmup then cosine decay, accuracy on the labelled positions
of every test slice, a stop at the target accuracy or once accuracy stopped rising
(config.plateau), a progress bar.

The model is called as model(input_ids, where) and returns the logits of the positions
where the bool mask is set (as MQARModel does): only labelled positions are scored.
Data is any `LabelledSplit`: inputs and labels [N, T] (label -100 where unscored) and a
key naming the slice in the metrics.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from mcgen.mqar.config import IGNORE_INDEX, Plateau, TrainConfig

# Why a run ended: its step budget, the target accuracy, the plateau rule, a NaN loss.
StopReason = Literal["budget", "target", "plateau", "diverged"]


class LabelledSplit(Protocol):
    """One slice of a task's data (MQARData, NIAHData)."""

    inputs: torch.Tensor  # [N, T] int64
    labels: torch.Tensor  # [N, T] int64, IGNORE_INDEX where a position is not scored

    def __len__(self) -> int: ...

    @property
    def key(self) -> str: ...


@dataclass(frozen=True)
class Evaluation:
    step: int
    loss: float  # mean training loss since the previous evaluation
    accuracy: float  # over every query of every test slice
    slices: dict[str, float]  # per test slice, keyed by slice_key(num_pairs, seq_len)


@dataclass(frozen=True)
class TrainResult:
    steps: int
    seconds: float
    accuracy: float  # at the last evaluation
    slice_accuracy: dict[str, float]  # at the last evaluation
    best_accuracy: float
    best_slice_accuracy: dict[str, float]  # at the evaluation with the best accuracy
    best_step: int
    stopped_early: bool  # reached config.early_stop_accuracy
    diverged: bool  # the training loss went NaN or infinite
    history: list[Evaluation] = field(default_factory=list)
    stop_reason: StopReason = "budget"
    eval_seconds: float = 0.0  # of `seconds`, the time spent evaluating
    paused: Paused | None = None  # where a run the plateau rule stopped stands


@dataclass(frozen=True)
class Paused:
    """Where a run stands at one of its evaluations (the plateau rule stopped it there, or
    train's on_evaluation was given it), as train(resume=...) goes on from it: the same
    model, optimiser, schedule, random streams and place in the epoch, so that going on
    gives what the run would have given had it not stopped."""

    model: dict[str, torch.Tensor]
    optimizer: dict
    schedule: dict
    generator: torch.Tensor  # the shuffling generator's state
    rng: torch.Tensor  # torch's global generator's state
    batches: list[tuple[int, torch.Tensor]]  # the epoch under way
    position: int  # its next batch
    history: list[Evaluation]  # the last one at the step it stopped at
    seconds: float
    eval_seconds: float


@torch.no_grad()
def query_hits(model: nn.Module, data: LabelledSplit, batch_size: int) -> torch.Tensor:
    """Whether the model got each labelled position of data right: a flat bool tensor on
    the CPU, row by row, in position order within a row; the model keeps its mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    hits = []
    for start in range(0, len(data), batch_size):
        inputs = data.inputs[start : start + batch_size].to(device)
        labels = data.labels[start : start + batch_size].to(device)
        where = labels != IGNORE_INDEX
        hits.append((model(inputs, where).argmax(-1) == labels[where]).cpu())
    model.train(was_training)
    return torch.cat(hits)


def evaluate(
    model: nn.Module, slices: Sequence[LabelledSplit], batch_size: int
) -> tuple[float, dict[str, float]]:
    """(accuracy over all queries, accuracy per slice); the model keeps its mode."""
    per_slice: dict[str, float] = {}
    all_correct = all_queries = 0
    for data in slices:
        hits = query_hits(model, data, batch_size)
        correct, queries = int(hits.sum()), hits.numel()
        per_slice[data.key] = correct / max(queries, 1)
        all_correct, all_queries = all_correct + correct, all_queries + queries
    return all_correct / max(all_queries, 1), per_slice


def _epoch(data: Sequence[LabelledSplit], batch_size: int, generator: torch.Generator):
    """One epoch's batches as (slice index, row indices): a batch never mixes slices
    (their lengths may differ), and the order of all batches is shuffled."""
    batches = []
    for index, piece in enumerate(data):
        rows = torch.randperm(len(piece), generator=generator)
        batches += [(index, rows[s : s + batch_size]) for s in range(0, len(piece), batch_size)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def plateaued(history: Sequence[Evaluation], plateau: Plateau) -> bool:
    """Whether accuracy stopped rising by the last evaluation of `history`: at least
    plateau.min_steps and one window in, and no evaluation of the last window steps beat
    the best before it by more than plateau.min_gain."""
    step = history[-1].step
    if step < max(plateau.min_steps, plateau.window):
        return False
    start = step - plateau.window
    before = [e.accuracy for e in history if e.step <= start]
    recent = [e.accuracy for e in history if e.step > start]
    if not before:
        return False
    return max(recent) <= max(before) + plateau.min_gain


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """The learning rate of step `step` (0-based) over the peak: linear warmup, cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # No decay on vectors (norm gains, biases): decaying them only pulls scales to zero.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    keep = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


class _Report:
    """A rich bar on a terminal, one plain line per evaluation elsewhere, or nothing."""

    def __init__(self, progress: Progress | None, console: Console | None, total: int):
        self.progress, self.console, self.total = progress, console, total
        self.task = None
        if progress is not None:
            self.task = progress.add_task("train", total=total, loss="", acc="")

    def step(self) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task)

    def evaluated(self, result: Evaluation) -> None:
        loss, acc = f"loss {result.loss:.3f}", f"acc {result.accuracy:.3f}"
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, loss=loss, acc=acc)
        elif self.console is not None:
            slices = " ".join(f"{k}:{v:.3f}" for k, v in result.slices.items())
            self.console.print(
                f"train step {result.step}/{self.total} {loss} {acc} [{slices}]",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )


@contextmanager
def _reporter(enabled: bool, total: int) -> Iterator[_Report]:
    console = Console(stderr=True)
    if not enabled:
        yield _Report(None, None, total)
        return
    if not console.is_terminal:
        yield _Report(None, console, total)
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TextColumn("{task.fields[acc]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        yield _Report(progress, console, total)


def train(
    model: nn.Module,
    train_data: LabelledSplit | Sequence[LabelledSplit],
    test_slices: LabelledSplit | Sequence[LabelledSplit],
    config: TrainConfig,
    progress: bool = True,
    resume: Paused | None = None,
    on_evaluation: Callable[[Paused], None] | None = None,
) -> TrainResult:
    """Train in place and report test accuracy on query positions.

    Seeds torch with config.seed and shuffles with a generator seeded from it, so the
    same model initialisation (seed before building it) and data give the same run. A
    run the plateau rule stops returns where it stands (`paused`); `resume` goes on from
    there (a model of the same shape, the same data and config but for the plateau).
    on_evaluation gets where the run stands after each evaluation it goes on from (a
    checkpoint: resuming from it gives the same run as not stopping there).
    """
    train_data = list(train_data) if isinstance(train_data, (list, tuple)) else [train_data]
    test_slices = list(test_slices) if isinstance(test_slices, (list, tuple)) else [test_slices]
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    device = next(model.parameters()).device

    per_epoch = sum(math.ceil(len(d) / config.batch_size) for d in train_data)
    total = config.max_steps if config.max_steps is not None else config.epochs * per_epoch
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, min(config.warmup, total), total)
    )

    history: list[Evaluation] = []
    best: Evaluation | None = None
    step, stopped_early, diverged, flat = 0, False, False, False
    loss_sum, loss_count = torch.zeros((), device=device), 0
    eval_seconds = earlier_seconds = 0.0
    pending: tuple[list[tuple[int, torch.Tensor]], int] | None = None
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        schedule.load_state_dict(resume.schedule)
        generator.set_state(resume.generator)
        torch.set_rng_state(resume.rng)
        history = list(resume.history)
        step = history[-1].step  # it stopped at an evaluation
        best = max(history, key=lambda e: e.accuracy)  # the first of the best, as below
        eval_seconds, earlier_seconds = resume.eval_seconds, resume.seconds
        pending = (resume.batches, resume.position)
    started = time.perf_counter()

    def standing(batches: list[tuple[int, torch.Tensor]], position: int) -> Paused:
        """Where the run stands after an evaluation, its next batch batches[position]."""
        return Paused(
            model={k: v.detach().clone() for k, v in model.state_dict().items()},
            optimizer=copy.deepcopy(optimizer.state_dict()),
            schedule=copy.deepcopy(schedule.state_dict()),
            generator=generator.get_state(),
            rng=torch.get_rng_state(),
            batches=batches,
            position=position,
            history=list(history),
            seconds=earlier_seconds + time.perf_counter() - started,
            eval_seconds=eval_seconds,
        )

    model.train()
    with _reporter(progress, total) as report:
        while step < total and not (stopped_early or diverged or flat):
            batches, start = pending or (_epoch(train_data, config.batch_size, generator), 0)
            pending = None
            for position in range(start, len(batches)):
                index, rows = batches[position]
                inputs = train_data[index].inputs[rows].to(device)
                labels = train_data[index].labels[rows].to(device)
                where = labels != IGNORE_INDEX
                loss = F.cross_entropy(model(inputs, where), labels[where])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                schedule.step()
                step += 1
                # Summed on the device: no host sync per step.
                loss_sum, loss_count = loss_sum + loss.detach(), loss_count + 1
                report.step()

                epoch_end = position == len(batches) - 1
                due = (
                    epoch_end if config.eval_every is None else step % config.eval_every == 0
                ) or step == total
                if due:
                    mean_loss = float(loss_sum) / loss_count
                    loss_sum, loss_count = torch.zeros((), device=device), 0
                    eval_started = time.perf_counter()
                    accuracy, slices = evaluate(model, test_slices, config.batch_size)
                    eval_seconds += time.perf_counter() - eval_started
                    result = Evaluation(step, mean_loss, accuracy, slices)
                    history.append(result)
                    report.evaluated(result)
                    if best is None or accuracy > best.accuracy:
                        best = result
                    diverged = not math.isfinite(mean_loss)
                    stopped_early = accuracy >= config.early_stop_accuracy
                    flat = config.plateau is not None and plateaued(history, config.plateau)
                if step >= total or stopped_early or diverged or flat:
                    break
                if due and on_evaluation is not None:
                    on_evaluation(standing(batches, position + 1))

    assert best is not None  # the last step always evaluates
    seconds = earlier_seconds + time.perf_counter() - started
    paused = standing(batches, position + 1) if flat and not (stopped_early or diverged) else None
    last = history[-1]
    reason: StopReason = "budget"
    if diverged:
        reason = "diverged"
    elif stopped_early:
        reason = "target"
    elif flat:
        reason = "plateau"
    return TrainResult(
        steps=step,
        seconds=seconds,
        accuracy=last.accuracy,
        slice_accuracy=last.slices,
        best_accuracy=best.accuracy,
        best_slice_accuracy=best.slices,
        best_step=best.step,
        stopped_early=stopped_early,
        diverged=diverged,
        history=history,
        stop_reason=reason,
        eval_seconds=eval_seconds,
        paused=paused,
    )
