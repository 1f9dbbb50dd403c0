"""benchmarks/gpu_step_time.py: the probe that sizes a GPU study's steps picks the
candidate it is asked for, at the space's widest width, and times it in P processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_step_time.py"

SPACE = """\
name: probe_grid
base:
  memory: {heads: 2, key_dim: 4, value_dim: 4}
  compute: {chunk_size: 4}
vary:
  memory.recurrence: [linear, decay]
bundles:
  width:
    d8: {layer: {d_model: 8}}
    d16: {layer: {d_model: 16}}
  variant:
    base: {aggregation: {kind: none}, cache: {segments: {kind: none}}}
    grm: {aggregation: {kind: grm}, cache: {segments: {kind: constant, length: 4}}}
sampler: grid
mqar:
  vocab_size: 16
  train:
    - {seq_len: 16, num_pairs: 2, num_examples: 32}
  test:
    - {seq_len: 16, num_pairs: 2, num_examples: 16}
train:
  learning_rates: [1.0e-3]
  steps: 2
  batch_size: 4
  layers: 1
"""


def _probe(space: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(space), "--steps", "1", "--json", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )


@pytest.mark.slow  # builds four packages, then two processes each build one and train it
def test_the_probe_times_the_asked_for_candidate_at_the_widest_width_in_each_process(
    tmp_path: Path,
) -> None:
    space = tmp_path / "probe_grid.yaml"
    space.write_text(SPACE, encoding="utf-8")
    done = _probe(space, "--where", "memory.recurrence=decay", "--processes", "2")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["candidate"]["width"] == "d16"
    assert result["candidate"]["memory.recurrence"] == "decay"
    # Of base and + GRM, the one with more operations per step: the cached one.
    assert result["candidate"]["variant"] == "grm"
    assert result["processes"] == 2
    assert 0 < result["seconds_per_step"] <= result["slowest_process_seconds_per_step"]


def test_the_probe_refuses_a_filter_no_candidate_meets(tmp_path: Path) -> None:
    space = tmp_path / "probe_grid.yaml"
    space.write_text(SPACE, encoding="utf-8")
    done = _probe(space, "--where", "memory.recurrence=titans")
    assert done.returncode != 0
    assert "no candidate at width 16 with memory.recurrence=titans" in done.stderr
