"""Record a generated package's kernel launches at a real shape, on a CPU, without running them.

In a process where Triton compiles for a GPU (not its interpreter), the package's kernels
are real `JITFunction`s. Their `run` (what `kernel[grid](...)` calls) is replaced by a
recorder: it binds the arguments as the launcher would, evaluates the grid, and keeps the
launch (kernel, arguments, options, grid and Triton's compile key) instead of running it.
The package's public `mc_forward(..., backend="triton")` and a backward pass then go
through the real glue, so every launch has the real shapes, strides and meta-parameters.
Outputs are garbage (no kernel ran): only the launches matter.

Autotuned kernels are recorded once per config of their (pruned) set: the card may pick
any of them.

This module changes process-wide Triton state (the active driver, the interpreter
switch, `JITFunction.run` while recording): run it in a process of its own
(mcgen.kernels.worker).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class TensorArg:
    """A tensor argument as the compiler sees it (dtype and address) and the cost model
    needs it (shape, strides): a stand-in that Triton specialises exactly like the tensor."""

    dtype: Any  # torch.dtype
    address: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    itemsize: int

    @classmethod
    def of(cls, tensor) -> TensorArg:
        return cls(
            tensor.dtype,
            tensor.data_ptr(),
            tuple(tensor.shape),
            tuple(tensor.stride()),
            tensor.element_size(),
        )

    def data_ptr(self) -> int:
        return self.address

    def to_json(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "stride": list(self.stride),
            "dtype": str(self.dtype).removeprefix("torch."),
            "itemsize": self.itemsize,
        }


@dataclass
class Launch:
    """One recorded launch of one kernel (one config of an autotuned one)."""

    kernel: Any  # the JITFunction
    args: list[Any]  # every parameter in order; tensors as TensorArg
    options: dict[str, Any]  # num_warps, num_stages, ... as given to the launch
    grid: tuple[int, ...]
    key: str  # Triton's cache key of the compiled kernel: equal keys, one compile
    phase: str  # forward or backward
    call: int  # which launch call of the run (the configs of one autotuned call share it)
    config: int = 0  # index among the call's autotune configs
    configs: int = 1  # how many configs the call's autotuner could pick from

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    @property
    def module(self) -> str:
        return self.kernel.fn.__module__.rsplit(".", 1)[-1]

    def to_json(self) -> dict[str, Any]:
        """The launch for the report (the parent process): names, grid, options, arguments."""
        pairs = list(zip(self.kernel.params, self.args, strict=True))
        constexprs = {p.name: _plain(a) for p, a in pairs if p.is_constexpr}
        tensors = {p.name: a.to_json() for p, a in pairs if _is_tensor(a)}
        scalars = {p.name: _plain(a) for p, a in pairs if not p.is_constexpr and not _is_tensor(a)}
        return {
            "module": self.module,
            "kernel": self.name,
            "phase": self.phase,
            "call": self.call,
            "config": self.config,
            "configs": self.configs,
            "grid": list(self.grid),
            "options": {k: _plain(v) for k, v in self.options.items()},
            "constexprs": constexprs,
            "tensors": tensors,
            "scalars": scalars,
        }


def _is_tensor(value: Any) -> bool:
    return isinstance(value, TensorArg)


def _plain(value: Any) -> Any:
    """A JSON value for a kernel argument (dtypes and functions as their names)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


@dataclass
class Recorder:
    """Collects launches; `phase` names the pass (forward, backward) being recorded."""

    phase: str = "forward"
    launches: list[Launch] = field(default_factory=list)
    _calls: int = 0
    _autotuned: tuple[int, int, int] | None = None  # (call, config, configs) while tuning

    def record(self, kernel, *args, grid, warmup, **kwargs) -> None:
        """Stands in for JITFunction.run: bind as the launcher does, keep, run nothing."""
        import torch
        from triton.runtime.driver import driver
        from triton.runtime.jit import compute_cache_key

        _, key_cache, _, _, binder = kernel.device_caches[driver.active.get_current_device()]
        bound, _, options = binder(*args, **kwargs)  # options: num_warps, num_stages, ...
        if callable(grid):
            grid = grid(bound)
        stand_ins = [TensorArg.of(v) if torch.is_tensor(v) else v for v in bound.values()]
        _, specialization, _ = binder(*stand_ins, **options)
        if self._autotuned is None:
            call, config, configs = self._calls, 0, 1
            self._calls += 1
        else:
            call, config, configs = self._autotuned
        self.launches.append(
            Launch(
                kernel=kernel,
                args=stand_ins,
                options=dict(options),
                grid=tuple(int(g) for g in grid),
                key=compute_cache_key(key_cache, specialization, options),
                phase=self.phase,
                call=call,
                config=config,
                configs=configs,
            )
        )

    def record_autotuned(self, tuner, *args, **kwargs) -> None:
        """Stands in for Autotuner.run: record the launch under every config it may pick."""
        tuner.nargs = dict(zip(tuner.arg_names, args, strict=False))
        configs = tuner.prune_configs(kwargs) if len(tuner.configs) > 1 else tuner.configs
        tuner.nargs = None
        call = self._calls
        self._calls += 1
        try:
            for index, config in enumerate(configs):
                self._autotuned = (call, index, len(configs))
                tuner.fn.run(*args, **kwargs, **config.all_kwargs())
        finally:
            self._autotuned = None


@contextmanager
def recording(recorder: Recorder) -> Iterator[Recorder]:
    """Within: kernel launches are recorded by `recorder`, not run."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    def record(kernel, *args, **kwargs):
        return recorder.record(kernel, *args, **kwargs)

    def record_autotuned(tuner, *args, **kwargs):
        return recorder.record_autotuned(tuner, *args, **kwargs)

    run, tuned_run = JITFunction.run, Autotuner.run
    JITFunction.run = record  # methods: the kernel (tuner) comes first
    Autotuner.run = record_autotuned
    try:
        yield recorder
    finally:
        JITFunction.run, Autotuner.run = run, tuned_run


class CaptureError(Exception):
    """The package could not be driven through its Triton path on this CPU (says why)."""


def import_for_capture(package_dir: Path) -> ModuleType:
    """Import a built package so that its kernels compile for a GPU while its glue still
    accepts CPU tensors.

    Triton's switch (triton.knobs.runtime.interpret) is set off, and the package's kernel
    modules (triton_*.py) are imported while the environment says so too: the kernels are
    JITFunctions and any choice a kernel module makes at import for the interpreter (a
    single config, fp32 dot operands) is the GPU's. Then TRITON_INTERPRET=1 goes into the
    environment, so the glue (imported on first use) lets CPU tensors through.
    """
    import triton

    from mcgen.packages import import_package

    triton.knobs.runtime.interpret = False  # also sets TRITON_INTERPRET=0
    package = import_package(package_dir)
    for path in sorted(package_dir.glob("triton_*.py")):
        importlib.import_module(f"{package.__name__}.{path.stem}")
    os.environ["TRITON_INTERPRET"] = "1"
    return package


def run_forward_backward(package: ModuleType, shape: tuple[int, ...], dtype, recorder: Recorder):
    """One mc_forward (backend triton) and one backward of a random gradient, at `shape`
    (B, T, H, K, V) in `dtype`, on CPU tensors, recording the launches of each."""
    import torch

    selftest = importlib.import_module(f"{package.__name__}.selftest")
    batch, seq_len, heads, key_dim, value_dim = shape
    inputs = selftest.make_inputs(batch, seq_len, heads, key_dim, value_dim, dtype=dtype, seed=0)
    leaves = {
        name: x.requires_grad_(True) if torch.is_tensor(x) and x.is_floating_point() else x
        for name, x in inputs.items()
    }
    try:
        with recording(recorder):
            recorder.phase = "forward"
            out = package.mc_forward(**leaves, backend="triton")
            recorder.phase = "backward"
            out.backward(torch.randn_like(out))
    except RuntimeError as exc:
        raise CaptureError(
            f"driving {package.__name__}'s triton backend on CPU tensors failed: {exc}"
        ) from exc
