"""Benchmark rows: what ran where, written as CSV and JSON.

Every row carries the machine's keys (device name, driver, CUDA, torch, triton, python
and mcgen versions) beside its own, so rows from several machines can be concatenated
and still told apart. Statuses: `ok` (timed), `refused` (disagreed with the reference:
never timed), `skipped` (not available here, with the reason), `error` (raised while
timing, e.g. out of memory).
"""

from __future__ import annotations

import csv
import datetime
import json
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

from mcgen import __version__

ENV_FIELDS = (
    "device",
    "device_type",
    "threads",
    "driver",
    "cuda",
    "torch",
    "triton",
    "python",
    "mcgen",
    "date",
)
ROW_FIELDS = (
    "spec",
    "segment_length",
    "provider",
    "mode",
    "dtype",
    "batch",
    "seq_len",
    "heads",
    "key_dim",
    "value_dim",
    "status",
    "reason",
    "time_ms",
    "timer",
    "peak_bytes",
    "memory_method",
    "flops",
    "tflops",
    "checked_against",
    "check_shape",
    "check_error",
    "check_grad_error",
    "check_tolerance",
    "bench_check_error",
    "bench_check_grad_error",
    "bench_check_tolerance",
)
FIELDS = ENV_FIELDS + ROW_FIELDS
STATUSES = ("ok", "refused", "skipped", "error")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def nvidia_driver() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else None


def environment(device: torch.device) -> dict[str, Any]:
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # not installed, or broken
        triton_version = None
    cuda = device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(device) if cuda else cpu_name(),
        "device_type": device.type,
        "threads": None if cuda else torch.get_num_threads(),
        "driver": nvidia_driver() if cuda else None,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "mcgen": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def full_rows(env: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with the machine's keys first, every field present (None where unknown)."""
    return [{field: {**env, **row}.get(field) for field in FIELDS} for row in rows]


def write_csv(path: Path, env: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        for row in full_rows(env, rows):
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return path


def write_json(
    path: Path, env: dict[str, Any], rows: list[dict[str, Any]], config: dict[str, Any]
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"environment": env, "config": config, "rows": full_rows(env, rows)}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
