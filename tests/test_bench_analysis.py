"""Speedups over SDPA and the crossovers in T and segment length (mcgen.bench.analysis)."""

from __future__ import annotations

import math

import pytest

from mcgen.bench import analysis


def row(provider, seq_len, time_ms, *, spec="grm", c=256, mode="fwd", status="ok"):
    baseline = provider == "sdpa"
    return {
        "spec": None if baseline else spec,
        "segment_length": None if baseline else c,
        "provider": provider,
        "mode": mode,
        "dtype": "bf16",
        "seq_len": seq_len,
        "status": status,
        "time_ms": time_ms if status == "ok" else None,
    }


def test_speedup_and_crossover_interpolated_in_log_t():
    # Attention grows as T^2 per sequence at fixed B*T (here: time ~ T), the kernel is flat.
    rows = [row("sdpa", t, t / 1024) for t in (1024, 2048, 4096, 8192)]
    rows += [row("generated-triton", t, 3.0) for t in (1024, 2048, 4096, 8192)]
    [sweep] = analysis.speedups_over_t(rows)
    assert (sweep.spec, sweep.provider, sweep.mode, sweep.fixed) == (
        "grm",
        "generated-triton",
        "fwd",
        "C=256",
    )
    assert [t for t, _ in sweep.points] == [1024, 2048, 4096, 8192]
    assert sweep.points[0][1] == pytest.approx(1 / 3)
    assert sweep.points[-1][1] == pytest.approx(8 / 3)
    # Equal times at T = 3 * 1024: exact, since log speedup is linear in log T here.
    assert sweep.crossover == pytest.approx(3072)
    assert sweep.describe_crossover("T") == "faster from T ~ 3072"


def test_never_faster_always_faster_and_a_dip_after_the_crossing():
    rows = [row("sdpa", t, 1.0) for t in (2048, 4096, 8192)]
    rows += [row("generated-torch", t, 2.0) for t in (2048, 4096, 8192)]  # never faster
    rows += [row("generated-triton", t, 0.5) for t in (2048, 4096, 8192)]  # always faster
    # Faster at 2048, slower at 4096, faster again at 8192: the crossover is the last one.
    rows += [row("naive", 2048, 0.5), row("naive", 4096, 2.0), row("naive", 8192, 0.5)]
    sweeps = {s.provider: s for s in analysis.speedups_over_t(rows)}
    assert sweeps["generated-torch"].crossover is None
    assert sweeps["generated-torch"].describe_crossover("T") == "slower at every T"
    assert sweeps["generated-triton"].crossover == 2048
    assert sweeps["generated-triton"].describe_crossover("T") == "faster from the first T (2048)"
    assert sweeps["naive"].crossover == pytest.approx(math.sqrt(4096 * 8192))


def test_rows_that_were_not_timed_take_no_part():
    rows = [row("sdpa", 2048, 1.0), row("sdpa", 4096, 2.0, status="error")]
    rows += [row("generated-triton", 2048, 0.5), row("generated-triton", 4096, 0.5)]
    rows += [row("generated-torch", 2048, 0.5, status="refused")]
    [sweep] = analysis.speedups_over_t(rows)
    assert sweep.provider == "generated-triton"
    assert sweep.points == ((2048, 2.0),)  # no baseline at 4096


def test_segment_length_sweep_and_markdown():
    rows = [row("sdpa", 32768, 8.0), row("sdpa", 32768, 30.0, mode="fwd+bwd")]
    for c, ms in ((64, 16.0), (256, 6.0), (1024, 2.0)):
        rows.append(row("generated-triton", 32768, ms, c=c))
    rows.append(row("generated-triton", 32768, 10.0, c=256, mode="fwd+bwd"))  # one C only
    [sweep] = analysis.speedups_over_segment_length(rows)
    assert (sweep.fixed, sweep.mode) == ("T=32768", "fwd")
    assert [c for c, _ in sweep.points] == [64, 256, 1024]
    assert 64 < sweep.crossover < 256

    text = analysis.markdown(rows)
    assert text is not None
    assert "| grm | C=256 | generated-triton | fwd+bwd | 3.00x |" in text
    over_c = "| grm | T=32768 | generated-triton | fwd | 0.50x | 1.33x | 4.00x | faster from C ~"
    assert over_c in text
    assert analysis.markdown([r for r in rows if r["provider"] != "sdpa"]) is None
