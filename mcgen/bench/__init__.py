"""`mcgen bench`: time generated packages against naive torch, attention and fla.

One job per module: `variants` builds a spec with other sizes into a scratch folder,
`providers` wraps each implementation behind one call, `check` compares outputs and
gradients, `timing` measures time and peak memory, `harness` runs the sweeps (validation
first, then timing), `results` writes CSV and JSON rows keyed by device and versions,
`plot` draws time against T, and `cli` is the command.
"""

from mcgen.bench.harness import BenchConfig, BenchError, BenchResult, run_bench

__all__ = ["BenchConfig", "BenchError", "BenchResult", "run_bench"]
