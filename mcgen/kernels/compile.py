"""Compile one recorded kernel launch for an NVIDIA GPU on a machine without one.

Triton compiles through `JITFunction.warmup`, the launcher's own path: the same binder
turns the launch's arguments into the specialisation (pointer dtypes, 16-byte alignment,
integers divisible by 16 or equal to 1, except those marked do_not_specialize), so what
compiles here is what the card would compile. A stub driver answers "cuda, sm_XX" to the
questions Triton asks a GPU; Triton ships ptxas, so the cubin is real.

From the compiled kernel: registers and spills (ptxas' own report), shared memory, and
how each tl.dot lowered (read off the ttgir: tensor-core wgmma or mma, else FMA).
"""

from __future__ import annotations

import contextlib
import io
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

# The lowering of a dot: Hopper's warpgroup MMA, Ampere's mma.sync, or plain FMA.
TENSOR_CORE_KINDS = ("wgmma", "mma")


@dataclass(frozen=True)
class Arch:
    """A compile target: Triton's capability number and the most shared memory per block."""

    name: str
    capability: int
    shared_limit: int  # bytes, the opt-in maximum per block


ARCHS = {
    "sm_90": Arch("sm_90", 90, 232448),  # Hopper: 227 KB
    "sm_80": Arch("sm_80", 80, 166912),  # Ampere A100: 163 KB
}


def stub_driver(arch: Arch):
    """A Triton driver that reports `arch` and never touches a GPU (compiling needs no more)."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase

    class StubDriver(DriverBase):
        target = GPUTarget("cuda", arch.capability, 32)

        @classmethod
        def is_active(cls) -> bool:
            return False

        def get_current_target(self):
            return self.target

        def get_current_device(self) -> int:
            # Triton caches binders and kernels per device: one "device" per arch keeps two
            # targets' kernels apart in one process.
            return arch.capability

        def get_current_stream(self, device: int | None = None) -> int:
            return 0

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_benchmarker(self):
            raise NotImplementedError("no GPU: kernels are compiled, never run")

        def map_python_to_cpp_type(self, ty: str) -> str:
            raise NotImplementedError("no GPU: kernels are compiled, never launched")

    return StubDriver()


def use_arch(arch: Arch) -> None:
    """Make `arch` Triton's active target in this process."""
    from triton.runtime.driver import driver

    driver.set_active(stub_driver(arch))


@dataclass(frozen=True)
class Dot:
    """One tl.dot after lowering: its kind (wgmma, mma or fma) and operand element type."""

    kind: str
    operand: str  # e.g. bf16, f16, f32


@dataclass(frozen=True)
class Compiled:
    """What compiling one launch gave (sizes in bytes; None where ptxas said nothing)."""

    seconds: float
    num_warps: int | None = None
    num_stages: int | None = None
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    stack: int | None = None
    shared: int | None = None
    dots: tuple[Dot, ...] = ()
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "num_warps": self.num_warps,
            "num_stages": self.num_stages,
            "registers": self.registers,
            "spill_stores": self.spill_stores,
            "spill_loads": self.spill_loads,
            "stack": self.stack,
            "shared": self.shared,
            "dots": [{"kind": d.kind, "operand": d.operand} for d in self.dots],
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Compiled:
        dots = tuple(Dot(d["kind"], d["operand"]) for d in data["dots"])
        return cls(**{**data, "dots": dots})


@dataclass(frozen=True)
class PtxasUsage:
    """The numbers of ptxas' -v report for one kernel (None: not in the log)."""

    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    stack: int | None = None


def parse_ptxas_log(log: str) -> PtxasUsage:
    """Registers, stack frame and spill bytes from ptxas -v output (Triton prints it).

    A kernel that calls non-inlined functions has one report per function: the registers
    and stack frame are the largest, the spills their sum.
    """
    registers = [int(n) for n in re.findall(r"Used (\d+) registers", log)]
    frames = re.findall(
        r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log
    )
    if not registers and not frames:
        return PtxasUsage()
    return PtxasUsage(
        registers=max(registers, default=None),
        spill_stores=sum(int(f[1]) for f in frames),
        spill_loads=sum(int(f[2]) for f in frames),
        stack=max((int(f[0]) for f in frames), default=0),
    )


# An op line of the ttgir: `%z = tt.dot %a, %b, %c ... : <a's type> * <b's type> -> <result>`.
_DOT_LINE = re.compile(r"=\s+(tt\.dot|ttng\.warp_group_dot)\s.*?:\s+(.*)$")
_ALIAS = re.compile(r"^(#[\w.]+)\s*=\s*(.*)$")
_ELEMENT = re.compile(r"x(bf16|f16|f32|tf32|f64|f8\w*|i8)\b")
_ENCODING = re.compile(r"->\s*tensor<[^,]*,\s*(#[\w.]+)")


def classify_dots(ttgir: str) -> tuple[Dot, ...]:
    """How each dot of a kernel lowered, from its TritonGPU IR.

    Hopper's tensor-core dots are `ttng.warp_group_dot` ops (wgmma). A `tt.dot` that stays
    is on tensor cores when its result has an `nvidia_mma` layout (versionMajor 2: mma.sync;
    3: wgmma), and is FMA otherwise (a blocked layout: one multiply-add per element).
    """
    aliases = {}
    for line in ttgir.splitlines():
        if m := _ALIAS.match(line.strip()):
            aliases[m.group(1)] = m.group(2)
    dots = []
    for line in ttgir.splitlines():
        m = _DOT_LINE.search(line)
        if not m:
            continue
        op, types = m.groups()
        element = _ELEMENT.search(types)
        operand = element.group(1) if element else "?"
        if op == "ttng.warp_group_dot":
            dots.append(Dot("wgmma", operand))
            continue
        encoding = _ENCODING.search(types)
        layout = aliases.get(encoding.group(1), "") if encoding else ""
        if "nvidia_mma" in layout:
            major = re.search(r"versionMajor\s*=\s*(\d+)", layout)
            dots.append(Dot("wgmma" if major and major.group(1) == "3" else "mma", operand))
        else:
            dots.append(Dot("fma", operand))
    return tuple(dots)


def compile_launch(kernel, args: list[Any], grid: tuple[int, ...], options: dict[str, Any]):
    """Compile `kernel` as a launch with these arguments would (the active arch: use_arch).

    `args` are the kernel's parameters in order (tensors may be stand-ins with .dtype and
    .data_ptr()); `options` the launch's num_warps, num_stages, ... Returns Compiled; a
    compile error is a finding, returned in `error`, never raised.
    """
    import triton

    triton.knobs.nvidia.dump_ptxas_log = True  # Triton prints ptxas -v: registers, spills
    log = io.StringIO()
    started = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            compiled = kernel.warmup(*args, grid=grid, **options)
    except Exception as exc:  # a kernel that does not compile is what the report is for
        message = f"{type(exc).__name__}: {exc}".strip().splitlines()
        return Compiled(
            seconds=time.perf_counter() - started, error=" | ".join(message[-8:])[-1500:]
        )
    seconds = time.perf_counter() - started
    usage = parse_ptxas_log(log.getvalue())
    return Compiled(
        seconds=seconds,
        num_warps=compiled.metadata.num_warps,
        num_stages=compiled.metadata.num_stages,
        registers=usage.registers,
        spill_stores=usage.spill_stores,
        spill_loads=usage.spill_loads,
        stack=usage.stack,
        shared=compiled.metadata.shared,
        dots=classify_dots(compiled.asm["ttgir"]),
    )


def dot_counts(dots: tuple[Dot, ...]) -> Counter[str]:
    """{kind: count}, e.g. {"wgmma": 4, "fma": 1}."""
    return Counter(d.kind for d in dots)
