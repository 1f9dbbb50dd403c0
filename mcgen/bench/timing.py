"""Time one call and measure its peak memory, on CUDA or on the CPU.

CUDA: the median of `triton.testing.do_bench` (it flushes the L2 cache between calls and
synchronises), and the peak of `torch.cuda.max_memory_allocated` during one call above
what was allocated before it (the inputs are not counted; what the call allocates,
gradients of the inputs included, is).

CPU: warm-up calls, then the median of wall-clock times (time.perf_counter) of at least
`repeats` calls and at least `min_time_s` seconds of them; peak memory is the peak of
live tensor bytes during one call, summed from the profiler's allocation events (as
benchmarks/cpu_torch_backend.py measures it), above what was live before it.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    median_ms: float
    calls: int  # timed calls (0 when do_bench chose)
    method: str


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], object],
    device: torch.device,
    *,
    warmup: int = 2,
    repeats: int = 5,
    min_time_s: float = 0.2,
    max_calls: int = 1000,
) -> Timing:
    """The median time of fn() in milliseconds."""
    if device.type == "cuda":
        from triton.testing import do_bench

        ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
        return Timing(float(ms), 0, "triton.testing.do_bench median")
    for _ in range(max(warmup, 0)):
        fn()
    times: list[float] = []
    while len(times) < max(repeats, 1) or (sum(times) < min_time_s and len(times) < max_calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return Timing(statistics.median(times) * 1e3, len(times), f"wall median of {len(times)} calls")


def peak_memory(fn: Callable[[], object], device: torch.device) -> tuple[int | None, str]:
    """(peak bytes one fn() call allocates above what was allocated before, how measured)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before, "torch.cuda.max_memory_allocated"
    if device.type == "cpu":
        return cpu_peak_bytes(fn), "profiler allocation events (live CPU tensors)"
    return None, "n/a"


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak of live CPU tensor bytes while fn runs, from the profiler's allocation events."""
    with (
        _native_stderr_silenced(),
        torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
        ) as prof,
    ):
        fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        # Allocations are charged to the innermost op (self usage); frees outside any op
        # come as "[memory]" events with a negative size.
        live += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Drop what native code writes to fd 2 (the profiler's start/stop lines) meanwhile."""
    fd = 2  # native code writes to the descriptor, whatever python's sys.stderr is now
    _flush_stderr()
    try:
        saved = os.dup(fd)
    except OSError:  # no descriptor 2: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
            try:
                yield
            finally:
                _flush_stderr()
                os.dup2(saved, fd)
    finally:
        os.close(saved)


def _flush_stderr() -> None:
    with suppress(AttributeError, OSError, ValueError):
        sys.stderr.flush()
