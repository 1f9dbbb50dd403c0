"""The child process of a kernel report: capture a package's launches, compile each once.

    python -m mcgen.kernels.worker JOB.json

JOB.json: {"package": DIR, "shape": [B, T, H, K, V], "dtype": "bfloat16", "arch": "sm_90"}
(and "compile": false to capture only).
Reports on stdout, one JSON event per line after EVENT_PREFIX (other lines are Triton's):
"captured" (every launch, with the index of its compile), "compiling" and "compiled" per
distinct compile, "failed" (capture error). Triton's on-disk cache should point at an
empty folder (TRITON_CACHE_DIR), so that every kernel is compiled, timed and reported by
ptxas here.
"""

from __future__ import annotations

import gc
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

EVENT_PREFIX = "mcgen-kernels-event: "


def emit(event: dict[str, Any]) -> None:
    print(EVENT_PREFIX + json.dumps(event), flush=True)


def distinct_compiles(launches) -> dict[tuple[int, str], int]:
    """(kernel, Triton's key) -> index of its compile, in order of first launch."""
    indices: dict[tuple[int, str], int] = {}
    for launch in launches:
        indices.setdefault((id(launch.kernel), launch.key), len(indices))
    return indices


def main(argv: list[str]) -> int:
    import torch

    from mcgen.kernels.capture import (
        CaptureError,
        Recorder,
        import_for_capture,
        run_forward_backward,
    )
    from mcgen.kernels.compile import ARCHS, compile_launch, use_arch

    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    # Triton 3.9 warns that its fp-fusion default will change; the launch path compiles
    # with the default of the installed Triton, as the card would.
    warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")
    use_arch(ARCHS[job["arch"]])
    recorder = Recorder()
    started = time.perf_counter()
    try:
        package = import_for_capture(Path(job["package"]))
        run_forward_backward(package, tuple(job["shape"]), getattr(torch, job["dtype"]), recorder)
    except CaptureError as exc:
        emit({"event": "failed", "message": str(exc)})
        return 3
    gc.collect()  # the inputs and the glue's tensors: only stand-ins stay
    compiles = distinct_compiles(recorder.launches)
    emit(
        {
            "event": "captured",
            "seconds": round(time.perf_counter() - started, 3),
            "compiles": len(compiles),
            "launches": [
                {**launch.to_json(), "compile": compiles[(id(launch.kernel), launch.key)]}
                for launch in recorder.launches
            ],
        }
    )
    if not job.get("compile", True):
        return 0
    done: set[int] = set()
    for launch in recorder.launches:
        index = compiles[(id(launch.kernel), launch.key)]
        if index in done:
            continue
        done.add(index)
        emit({"event": "compiling", "compile": index, "kernel": launch.name})
        result = compile_launch(launch.kernel, launch.args, launch.grid, launch.options)
        emit({"event": "compiled", "compile": index, "result": result.to_json()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
