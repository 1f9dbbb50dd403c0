"""The sweeps: every spec x segment length x T (at fixed B*T) x provider x mode.

Validation comes first and decides what is timed:

1. at a small shape (B = 1, a few complete segments, T not a multiple of the segment or
   chunk length, at most `check_heads` heads, the benchmark's K and V and dtype) on the
   benchmark's device, each provider's output, and with fwd+bwd its gradients, are
   compared with the fp64 truth: the package's `reference` for the spec's own
   implementations, fp64 attention for the baselines. A provider that disagrees (or
   raises) is refused for every shape: reported with its error, never timed.
2. at each benchmark shape, where the per-token reference is too slow, each
   implementation of the spec is compared with the generated torch backend (itself
   checked in step 1) at twice the tolerance; the anchor and the baselines must give
   finite outputs and gradients. A disagreement refuses that shape.

Then each (provider, shape, mode) is timed (`timing.time_call`), its peak memory
measured, and its achieved TFLOP/s computed from mcgen's cost model: the forward FLOPs
of `compile_spec(spec, T)` (attention_cost for SDPA, a linear-attention spec for fla),
times 3 for fwd+bwd (the backward pass counted as twice the forward, the usual
convention). fwd runs under torch.no_grad(); fwd+bwd backpropagates one random upstream
gradient into q, k, v and the gates (u, g, beta) with torch.autograd.grad.
"""

from __future__ import annotations

import gc
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from mcgen.bench import analysis, check, providers, results
from mcgen.bench.providers import ANCHOR, BASELINES, Provider, Unavailable
from mcgen.bench.timing import peak_memory, time_call
from mcgen.bench.variants import LENGTH_KINDS, Target, VariantError, build_target
from mcgen.components.registry import AGGREGATIONS
from mcgen.segments import segment_ends

MODES = ("fwd", "fwd+bwd")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
BWD_FLOP_FACTOR = 3  # fwd+bwd FLOPs = 3 x forward FLOPs
BASELINE_CHECK_LEN = 300  # tokens of the baselines' small-shape check

# docs/performance.md: one H100, B x T = 32768, H = 16, K = V = 128, bf16, T from 2k to 32k.
GPU_DEFAULTS: dict[str, Any] = {
    "providers": ("generated-triton", "generated-torch", "naive", "sdpa", "fla"),
    "tokens": 32768,
    "seq_lens": (2048, 4096, 8192, 16384, 32768),
    "heads": 16,
    "key_dim": 128,
    "value_dim": 128,
    "dtype": "bf16",
}
# CPU: small enough to finish in a minute or two; the spec's own heads and dimensions.
CPU_DEFAULTS: dict[str, Any] = {
    "providers": ("generated-torch", "naive", "sdpa"),
    "tokens": 2048,
    "seq_lens": (256, 512, 1024, 2048),
    "heads": None,
    "key_dim": None,
    "value_dim": None,
    "dtype": "fp32",
}

Progress = Callable[[str, int], Callable[[str], None]]


class BenchError(Exception):
    """A benchmark that cannot run as asked (the message says why)."""


@dataclass(frozen=True)
class BenchConfig:
    specs: tuple[Path, ...]
    providers: tuple[str, ...] | None = None  # None: the device's defaults
    modes: tuple[str, ...] = MODES
    seq_lens: tuple[int, ...] | None = None
    tokens: int | None = None  # B * T, fixed along the sweep over T
    segment_lengths: tuple[int, ...] | None = None  # None: each spec's own
    heads: int | None = None
    key_dim: int | None = None
    value_dim: int | None = None
    dtype: str | None = None  # "bf16" or "fp32"
    device: str = "auto"  # "auto", "cpu" or "cuda"
    seed: int = 0
    # CPU timer: warm-up calls, then the median of >= repeats calls and >= min_time_s.
    warmup: int = 2
    repeats: int = 5
    min_time_s: float = 0.2
    memory: bool = True  # measure peak memory (one extra call per case)
    check_heads: int = 4  # heads of the small-shape check (the reference is per token)
    check_max_len: int = 8192  # tokens of the small-shape check, at most
    threads: int | None = None  # CPU: torch.set_num_threads for the run (None: torch's own)

    def resolved(self) -> BenchConfig:
        """Device chosen, the device's defaults filled in, everything checked."""
        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device not in ("cpu", "cuda"):
            raise BenchError(f"device must be auto, cpu or cuda, got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise BenchError("--device cuda, but torch sees no CUDA device")
        defaults = GPU_DEFAULTS if device == "cuda" else CPU_DEFAULTS

        def given(name: str):  # None means "not given"; 0 is given, and check() refuses it
            value = getattr(self, name)
            return defaults[name] if value is None else value

        fields = ("providers", "tokens", "seq_lens", "heads", "key_dim", "value_dim", "dtype")
        filled = replace(self, device=device, **{name: given(name) for name in fields})
        filled.check()
        return filled

    def check(self) -> None:
        problems = []
        if not self.specs:
            problems.append("give at least one spec")
        unknown = [p for p in self.providers or () if p not in providers.PROVIDERS]
        if unknown:
            known = ", ".join(providers.PROVIDERS)
            problems.append(f"unknown provider {', '.join(unknown)} (known: {known})")
        bad_modes = [m for m in self.modes if m not in MODES]
        if bad_modes or not self.modes:
            problems.append(f"mode must be fwd or fwd+bwd, got {', '.join(bad_modes) or 'none'}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be bf16 or fp32, got {self.dtype}")
        assert self.tokens is not None and self.seq_lens is not None
        for name, values in (
            ("seq-len", self.seq_lens),
            ("tokens", (self.tokens,)),
            ("segment-length", self.segment_lengths or ()),
            ("heads", (self.heads,) if self.heads is not None else ()),
            ("key-dim", (self.key_dim,) if self.key_dim is not None else ()),
            ("value-dim", (self.value_dim,) if self.value_dim is not None else ()),
            ("threads", (self.threads,) if self.threads is not None else ()),
        ):
            if any(v < 1 for v in values):
                problems.append(f"--{name} must be positive, got {', '.join(map(str, values))}")
        too_long = [t for t in self.seq_lens if t > self.tokens]
        if too_long:
            problems.append(
                f"--seq-len {', '.join(map(str, too_long))} exceeds --tokens {self.tokens} "
                "(B = tokens // T would be 0)"
            )
        if problems:
            raise BenchError("; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["specs"] = [str(p) for p in self.specs]
        return data


@dataclass
class BenchResult:
    environment: dict[str, Any]
    config: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def refused(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == "refused"]

    def to_json(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "config": self.config,
            "rows": results.full_rows(self.environment, self.rows),
        }

    def write(self, out_dir: Path, name: str = "bench", plot: bool = True) -> dict[str, Path]:
        """Write OUT/NAME.csv, OUT/NAME.json, OUT/NAME_speedups.md when SDPA was timed (the
        speedups over it and the crossovers, mcgen.bench.analysis) and, with plot,
        OUT/NAME.png (time against T) and, when several segment lengths ran,
        OUT/NAME_segments.png; returns the paths."""
        paths = {
            "csv": results.write_csv(out_dir / f"{name}.csv", self.environment, self.rows),
            "json": results.write_json(
                out_dir / f"{name}.json", self.environment, self.rows, self.config
            ),
        }
        speedups = analysis.markdown(self.rows)  # row fields only: no environment needed
        if speedups is not None:
            paths["speedups"] = out_dir / f"{name}_speedups.md"
            paths["speedups"].write_text(speedups, encoding="utf-8")
        if plot:
            from mcgen.bench.plot import plot_segments, plot_times

            rows = self.to_json()["rows"]
            paths["png"] = plot_times(rows, out_dir / f"{name}.png")
            if len({r["segment_length"] for r in rows if r["segment_length"]}) > 1:
                paths["segments_png"] = plot_segments(rows, out_dir / f"{name}_segments.png")
        return paths


@dataclass
class Verdict:
    """The small-shape check of one provider against its fp64 truth."""

    status: str  # "ok", "refused" or "skipped"
    reason: str | None = None
    against: str | None = None
    shape: str | None = None
    out_error: float | None = None
    grad_error: float | None = None
    tolerance: float | None = None

    def for_mode(self, mode: str) -> tuple[str, str | None]:
        """(status, reason) of this provider in a mode: gradients matter for fwd+bwd only."""
        if self.status != "ok" or self.tolerance is None:
            return self.status, self.reason
        if self.out_error is not None and not self.out_error <= self.tolerance:
            return "refused", (
                f"output disagrees with the {self.against} at {self.shape}: "
                f"rel. error {self.out_error:.2e} > {self.tolerance:.0e}"
            )
        bad_grads = self.grad_error is not None and not self.grad_error <= 2 * self.tolerance
        if mode == "fwd+bwd" and bad_grads:
            return "refused", (
                f"gradients disagree with the {self.against} at {self.shape}: "
                f"rel. error {self.grad_error:.2e} > {2 * self.tolerance:.0e}"
            )
        return "ok", None

    def fields(self) -> dict[str, Any]:
        return {
            "checked_against": self.against,
            "check_shape": self.shape,
            "check_error": self.out_error,
            "check_grad_error": self.grad_error,
            "check_tolerance": self.tolerance,
        }


def run_bench(
    config: BenchConfig,
    progress: Progress | None = None,
    checkpoint: Callable[[BenchResult], None] | None = None,
) -> BenchResult:
    """Build every target, validate every provider, time what passed; the rows, in order.

    `checkpoint(result)` is called after every row, so that a long sweep that is stopped
    (a time limit, a crash) keeps the rows it finished.
    """
    cfg = config.resolved()
    device = torch.device(cfg.device)
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        result = BenchResult(results.environment(device), cfg.to_json())
        with tempfile.TemporaryDirectory(prefix="mcgen-bench-") as tmp:
            targets = build_targets(cfg, Path(tmp))
            plan = _plan(cfg, targets)
            advance = progress("benchmarking", plan.steps) if progress else (lambda step: None)

            def emit(row: dict[str, Any]) -> None:
                result.rows.append(row)
                if checkpoint is not None:
                    checkpoint(result)

            for target in targets:
                _bench_target(target, plan.baselines_of[id(target)], cfg, advance, emit)
    finally:
        torch.set_num_threads(threads)
    return result


def build_targets(cfg: BenchConfig, workdir: Path) -> list[Target]:
    """Each spec at each segment length (its own when none is given), built under workdir."""
    targets = []
    for spec_path in cfg.specs:
        for length in cfg.segment_lengths or (None,):
            try:
                targets.append(
                    build_target(
                        Path(spec_path),
                        workdir,
                        segment_length=length,
                        heads=cfg.heads,
                        key_dim=cfg.key_dim,
                        value_dim=cfg.value_dim,
                    )
                )
            except VariantError as exc:
                raise BenchError(str(exc)) from None
    return targets


@dataclass
class _Plan:
    steps: int
    baselines_of: dict[int, list[str]]  # id(target) -> the baselines timed with it


def _plan(cfg: BenchConfig, targets: list[Target]) -> _Plan:
    """Baselines do not depend on the spec: each is timed once per (H, K, V)."""
    assert cfg.providers is not None and cfg.seq_lens is not None
    own = [p for p in cfg.providers if p not in BASELINES]
    seen: set[tuple[str, tuple[int, int, int]]] = set()
    baselines_of: dict[int, list[str]] = {}
    steps = 0
    for target in targets:
        mine = [p for p in cfg.providers if p in BASELINES and (p, target.dims) not in seen]
        seen |= {(p, target.dims) for p in mine}
        baselines_of[id(target)] = mine
        names = len(own) + len(mine)
        steps += names + names * len(cfg.seq_lens) * len(cfg.modes)
    return _Plan(steps, baselines_of)


def check_len(target: Target, cap: int) -> int:
    """Tokens of the small-shape check, at most `cap`: a few complete segments (top_k + 2
    for a sparse read, else 3; fewer where the cap or the boundaries run out) and part of
    another, not a multiple of the segment or chunk length."""
    spec = target.spec
    segments, chunk = spec.cache.segments, spec.compute.chunk_size
    sparse = AGGREGATIONS.get(spec.aggregation.kind).selects_top_k
    want = (spec.aggregation.top_k or 0) + 2 if sparse else 3
    ends = segment_ends(segments.kind, segments.length, segments.boundaries, cap)
    if ends:
        end, part = ends[min(want, len(ends)) - 1], segments.length or chunk
    else:
        end, part = 2 * chunk, chunk
    return max(1, min(end + part // 2 + 3, cap))


def _bench_target(
    target: Target,
    baselines: list[str],
    cfg: BenchConfig,
    advance: Callable[[str], None],
    emit: Callable[[dict[str, Any]], None],
) -> None:
    """One target's providers (the spec's own, then `baselines`): each checked at the small
    shape against its fp64 truth, then at each T checked at the bench shape and timed in
    each mode; one row per (provider, T, mode), emitted as soon as it is done."""
    _TargetSweep(target, baselines, cfg, advance, emit).run()


@dataclass
class _Anchor:
    """The anchor (ANCHOR, the generated torch backend) in the bench-shape check: the
    spec's other implementations are compared with its results at each shape."""

    provider: Provider | Unavailable | None
    ok: dict[str, bool]  # by mode: passed its small check, and has not failed at a bench shape
    results: check.Evaluated | None = None  # at the shape being benchmarked

    def evaluate(
        self, inputs: dict[str, Any], *, grads: bool, seed: int, device: torch.device
    ) -> check.Evaluated | None:
        """Its results at this shape: computed once, and again when gradients are first
        wanted. None if that raised (out of memory): then nothing is compared with it at
        this shape or any later one."""
        if self.results is not None and (self.results.grads is not None or not grads):
            return self.results
        assert isinstance(self.provider, Provider)
        try:
            self.results = check.evaluate(
                self.provider.forward, inputs, grads=grads and self.ok["fwd+bwd"], seed=seed
            )
        except Exception:
            self.ok = dict.fromkeys(MODES, False)
            _release(device)
            return None
        return self.results


@dataclass(frozen=True)
class _Shape:
    """One benchmark shape of a target (its H, K and V; B = tokens // T) and its inputs."""

    batch: int
    seq_len: int
    heads: int
    inputs: dict[str, Any]

    @property
    def label(self) -> str:
        return f"B={self.batch} T={self.seq_len} H={self.heads}"


# A row's (status, reason): status "ok", "refused", "error" or "skipped".
Status = tuple[str, str | None]


class _TargetSweep:
    """The sweep over one target: its providers, and the device, dtype and tolerance
    every check and timing of it shares."""

    def __init__(
        self,
        target: Target,
        baselines: list[str],
        cfg: BenchConfig,
        advance: Callable[[str], None],
        emit: Callable[[dict[str, Any]], None],
    ):
        assert cfg.providers is not None
        self.target = target
        self.baselines = baselines
        self.cfg = cfg
        self.advance = advance
        self.emit = emit
        self.device = torch.device(cfg.device)
        self.dtype = DTYPES[cfg.dtype or "fp32"]
        names = [p for p in cfg.providers if p not in BASELINES] + baselines
        self.made = {name: providers.make_provider(name, target, self.device) for name in names}
        self.tol = check.tolerance(self.dtype, self.device)

    def run(self) -> None:
        assert self.cfg.seq_lens is not None
        verdicts, anchor = self._small_checks()
        for seq_len in self.cfg.seq_lens:
            self._bench_length(seq_len, verdicts, anchor)

    # 1. The small-shape check against the fp64 truth.

    def _small_checks(self) -> tuple[dict[str, Verdict], _Anchor]:
        """Every provider's verdict; the anchor's too when the spec's implementations need
        it at the bench shapes and it is not among them (it is checked like the rest)."""
        own_len = check_len(self.target, self.cfg.check_max_len)
        heads = min(self.target.dims[0], self.cfg.check_heads)
        grads = "fwd+bwd" in self.cfg.modes
        truths: dict[tuple[str, int], check.Evaluated] = {}  # fp64 truths, computed once each
        verdicts: dict[str, Verdict] = {}
        for name, provider in self.made.items():
            self.advance(f"{self.target.label}: checking {name}")
            verdicts[name] = self._small_check(provider, own_len, heads, grads, truths)
        anchor = self.made.get(ANCHOR)
        if anchor is None and any(
            isinstance(p, Provider) and not p.baseline for p in self.made.values()
        ):
            anchor = providers.make_provider(ANCHOR, self.target, self.device)
            verdicts[ANCHOR] = self._small_check(anchor, own_len, heads, grads, truths)
        anchor_ok = {
            mode: isinstance(anchor, Provider) and verdicts[ANCHOR].for_mode(mode)[0] == "ok"
            for mode in MODES
        }
        return verdicts, _Anchor(anchor, anchor_ok)

    def _small_check(
        self,
        provider: Provider | Unavailable,
        own_len: int,
        heads: int,
        grads: bool,
        truths: dict[tuple[str, int], check.Evaluated],
    ) -> Verdict:
        """Check one provider at B = 1 against its fp64 truth (cached in `truths` by the
        truth's name and length: the spec's providers share the package's reference)."""
        if isinstance(provider, Unavailable):
            return Verdict("skipped", provider.reason)
        _, key_dim, value_dim = self.target.dims
        seed, device = self.cfg.seed, self.device
        seq_len = min(own_len, BASELINE_CHECK_LEN) if provider.baseline else own_len
        shape = f"B=1 T={seq_len} H={heads}"
        verdict = Verdict("ok", against=provider.reference_name, shape=shape, tolerance=self.tol)
        try:
            # Inputs in the benchmark's dtype; the truth sees the same (rounded) numbers in fp64.
            inputs = self.target.selftest.make_inputs(
                1, seq_len, heads, key_dim, value_dim, dtype=self.dtype, seed=seed, device=device
            )
            key = (provider.reference_name, seq_len)
            if key not in truths:
                truths[key] = check.evaluate(
                    provider.reference, inputs, grads=grads, seed=seed, dtype=torch.float64
                )
            truth = truths[key]
            got = check.evaluate(provider.forward, inputs, grads=grads, seed=seed)
        except Exception as exc:
            _release(device)
            reason = f"raised while checked at {shape}: {_describe(exc)}"
            return Verdict("refused", reason, against=provider.reference_name, shape=shape)
        verdict.out_error, verdict.grad_error = check.errors(got, truth)
        return verdict

    # 2. Each T: the bench-shape check, then the timing.

    def _bench_length(self, seq_len: int, verdicts: dict[str, Verdict], anchor: _Anchor) -> None:
        """Every provider's rows at one T, in order."""
        assert self.cfg.tokens is not None
        heads, key_dim, value_dim = self.target.dims
        batch = self.cfg.tokens // seq_len
        inputs = self.target.selftest.make_inputs(
            batch,
            seq_len,
            heads,
            key_dim,
            value_dim,
            dtype=self.dtype,
            seed=self.cfg.seed,
            device=self.device,
        )
        shape = _Shape(batch, seq_len, heads, inputs)
        del inputs
        for name, provider in self.made.items():
            fields = self._row_fields(name, shape) | verdicts[name].fields()
            status = {mode: verdicts[name].for_mode(mode) for mode in self.cfg.modes}
            if any(state == "ok" for state, _ in status.values()):
                fields |= self._bench_shape_check(name, provider, shape, status, anchor)
            self._emit_rows(name, provider, shape, fields, status)
        del shape
        anchor.results = None
        _release(self.device)

    def _row_fields(self, name: str, shape: _Shape) -> dict[str, Any]:
        """What every row of a provider at a shape says, its check's fields aside."""
        baseline = name in self.baselines
        _, key_dim, value_dim = self.target.dims
        return dict.fromkeys(results.ROW_FIELDS) | {
            "spec": None if baseline else self.target.name,
            "segment_length": None if baseline else self.target.segment_length,
            "provider": name,
            "dtype": self.cfg.dtype,
            "batch": shape.batch,
            "seq_len": shape.seq_len,
            "heads": shape.heads,
            "key_dim": key_dim,
            "value_dim": value_dim,
        }

    def _bench_shape_check(
        self,
        name: str,
        provider: Provider | Unavailable,
        shape: _Shape,
        status: dict[str, Status],
        anchor: _Anchor,
    ) -> dict[str, Any]:
        """One provider at a bench shape, in the modes still ok: a spec's implementation
        against the anchor's results, the anchor and the baselines for finite results.
        A mode that fails is refused in `status` (an error, if the call raised); returns the
        row's bench_check fields (none without the anchor's comparison)."""
        assert isinstance(provider, Provider)
        live = [mode for mode, (state, _) in status.items() if state == "ok"]
        grads, seed = "fwd+bwd" in live, self.cfg.seed
        compare = name not in self.baselines and name != ANCHOR and anchor.ok["fwd"]
        truth = (
            anchor.evaluate(shape.inputs, grads=grads, seed=seed, device=self.device)
            if compare
            else None
        )
        try:
            got = check.evaluate(provider.forward, shape.inputs, grads=grads, seed=seed)
            if truth is not None:
                return self._against_anchor(got, truth, live, status, shape)
            if not check.finite(got):
                for mode in live:
                    status[mode] = ("refused", f"NaN or Inf in its results at {shape.label}")
        except Exception as exc:  # out of memory, most often: report, go on
            for mode in live:
                status[mode] = ("error", f"at {shape.label}: {_describe(exc)}")
            _release(self.device)
        return {}

    def _against_anchor(
        self,
        got: check.Evaluated,
        truth: check.Evaluated,
        live: list[str],
        status: dict[str, Status],
        shape: _Shape,
    ) -> dict[str, Any]:
        """Refuse the live modes whose outputs (at twice the tolerance) or, with fwd+bwd,
        gradients (at four times) disagree with the anchor's; the bench_check fields."""
        out_err, grad_err = check.errors(got, truth)
        tol = self.tol
        for mode in live:
            if not out_err <= 2 * tol:
                status[mode] = (
                    "refused",
                    f"output disagrees with {ANCHOR} at {shape.label}: "
                    f"rel. error {out_err:.2e} > {2 * tol:.0e}",
                )
            elif mode == "fwd+bwd" and grad_err is not None and not (grad_err <= 4 * tol):
                status[mode] = (
                    "refused",
                    f"gradients disagree with {ANCHOR} at {shape.label}: "
                    f"rel. error {grad_err:.2e} > {4 * tol:.0e}",
                )
        return {
            "bench_check_error": out_err,
            "bench_check_grad_error": grad_err,
            "bench_check_tolerance": 2 * tol,
        }

    def _emit_rows(
        self,
        name: str,
        provider: Provider | Unavailable,
        shape: _Shape,
        fields: dict[str, Any],
        status: dict[str, Status],
    ) -> None:
        """One row per mode, timed where the checks passed."""
        where = "baseline" if name in self.baselines else self.target.label
        for mode in self.cfg.modes:
            self.advance(f"{where}: {name} {mode} T={shape.seq_len}")
            state, reason = status[mode]
            row = fields | {"mode": mode, "status": state, "reason": reason}
            if state == "ok":
                assert isinstance(provider, Provider)
                row |= _time(provider, shape, mode, self.cfg, self.device)
            self.emit(row)


def _time(
    provider: Provider, shape: _Shape, mode: str, cfg: BenchConfig, device: torch.device
) -> dict[str, Any]:
    call = _call(provider, shape.inputs, mode, device, cfg.seed)
    try:
        timing = time_call(
            call, device, warmup=cfg.warmup, repeats=cfg.repeats, min_time_s=cfg.min_time_s
        )
        peak, how = peak_memory(call, device) if cfg.memory else (None, "not measured")
    except Exception as exc:
        _release(device)
        return {"status": "error", "reason": f"while timing: {_describe(exc)}"}
    factor = BWD_FLOP_FACTOR if mode == "fwd+bwd" else 1
    flops = provider.flops(shape.batch, shape.seq_len) * factor
    return {
        "time_ms": timing.median_ms,
        "timer": timing.method,
        "peak_bytes": peak,
        "memory_method": how,
        "flops": flops,
        "tflops": flops / (timing.median_ms * 1e-3) / 1e12,
    }


def _call(
    provider: Provider, inputs: dict[str, Any], mode: str, device: torch.device, seed: int
) -> Callable[[], object]:
    if mode == "fwd":
        x = check.detached(inputs)

        def forward() -> object:
            with torch.no_grad():
                return provider.forward(x)

        return forward
    x, leaves = check.with_grad(inputs)
    value = inputs["v"]
    assert isinstance(value, torch.Tensor)
    upstream = check.upstream_grad(value.shape, device, seed).to(value.dtype)

    def forward_backward() -> object:
        out = provider.forward(x)
        return torch.autograd.grad(out, leaves, upstream, allow_unused=True)

    return forward_backward


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


__all__ = [
    "BenchConfig",
    "BenchError",
    "BenchResult",
    "CPU_DEFAULTS",
    "GPU_DEFAULTS",
    "LENGTH_KINDS",
    "MODES",
    "build_targets",
    "check_len",
    "run_bench",
]
