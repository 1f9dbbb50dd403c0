"""The correctness ladder's default shapes exercise what each spec adds (issue 12, item 4):
more cached memories than top_k for ssc, three doubling segments for logarithmic ones,
every explicit boundary; a --shape that misses one of these is warned about."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

import pytest
from spec_helpers import spec_text
from typer.testing import CliRunner

from mcgen.cli import app
from mcgen.codegen.package import render_package
from mcgen.packages import import_package
from mcgen.passes.pipeline import compile_spec
from mcgen.spec import Spec, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]


def _module(package: ModuleType, name: str) -> ModuleType:
    return importlib.import_module(f"{package.__name__}.{name}")


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory):
    """build(spec) -> (its selftest, its spec module), rendered into a temporary folder."""
    root = tmp_path_factory.mktemp("ladder_packages")
    built: dict[str, tuple[ModuleType, ModuleType]] = {}

    def build_spec(spec: Spec) -> tuple[ModuleType, ModuleType]:
        if spec.name not in built:
            package = render_package(spec, compile_spec(spec).plan, command="mcgen build x.yaml")
            imported = import_package(package.write(root / f"p{len(built)}"))
            built[spec.name] = (_module(imported, "selftest"), _module(imported, "spec"))
        return built[spec.name]

    return build_spec


def repo_spec(name: str) -> Spec:
    return load_spec(ROOT / "specs" / f"{name}.yaml").spec


def tiny(name: str, **fields) -> Spec:
    return parse_spec(spec_text(name=name, **fields))


def cached_at_the_end(spec_module: ModuleType, seq_len: int) -> int:
    """Cached memories the last token of a sequence of `seq_len` tokens reads."""
    return spec_module.segments_before(seq_len - 1)


@pytest.mark.parametrize(
    "spec",
    [
        repo_spec("ssc"),
        tiny("ssc_k2", aggregation="ssc", aggregation_extra=", top_k: 2"),
        tiny("ssc_k6", aggregation="ssc", aggregation_extra=", top_k: 6"),
        tiny("ssc_log", aggregation="ssc", segments="{kind: logarithmic, length: 2}"),
    ],
    ids=lambda spec: spec.name,
)
def test_ssc_ladder_reads_more_cached_memories_than_top_k(build, spec: Spec) -> None:
    selftest, spec_module = build(spec)
    for _, seq_len, *_ in selftest.ladder_shapes(quick=False):
        assert cached_at_the_end(spec_module, seq_len) > spec.aggregation.top_k


@pytest.mark.parametrize(
    "spec", [repo_spec("grm_log"), tiny("log2", segments="{kind: logarithmic, length: 2}")]
)
def test_logarithmic_ladder_passes_three_doubling_segments(build, spec: Spec) -> None:
    selftest, spec_module = build(spec)
    length = spec.cache.segments.length
    seq_len = selftest.ladder_seq_len()
    # Segments C, C, 2C, 4C, 8C: three that double the one before, all complete.
    assert seq_len > 16 * length
    assert cached_at_the_end(spec_module, seq_len) >= 5


@pytest.mark.parametrize(
    "spec",
    [
        repo_spec("residual_explicit"),
        tiny("five_ends", segments="{kind: explicit, boundaries: [3, 7, 12, 20, 33]}"),
        tiny("one_end", segments="{kind: explicit, boundaries: [40]}"),
    ],
    ids=lambda spec: spec.name,
)
def test_explicit_ladder_reaches_every_boundary(build, spec: Spec) -> None:
    selftest, _ = build(spec)
    assert selftest.ladder_seq_len() > spec.cache.segments.boundaries[-1]


@pytest.mark.parametrize(
    "spec",
    [
        repo_spec("grm"),
        repo_spec("ssc"),
        repo_spec("grm_log"),
        repo_spec("residual_explicit"),
        tiny("seg2", segments="{kind: constant, length: 2}", chunk_size=4),
        tiny("seg3", segments="{kind: constant, length: 3}", chunk_size=2),
        tiny("explicit_chunk", segments="{kind: explicit, boundaries: [4, 8]}", chunk_size=4),
    ],
    ids=lambda spec: spec.name,
)
def test_ladder_length_ends_inside_a_segment_and_a_chunk(build, spec: Spec) -> None:
    selftest, spec_module = build(spec)
    seq_len = selftest.ladder_seq_len()
    assert seq_len % spec.compute.chunk_size != 0
    assert spec_module.segment_start(seq_len) != seq_len  # not a segment end
    assert selftest.shape_notes(seq_len) == []


def test_ladder_length_is_bounded_and_says_what_it_leaves_out(build) -> None:
    spec = tiny("far", segments="{kind: explicit, boundaries: [100, 1000000]}")
    selftest, _ = build(spec)
    seq_len = selftest.ladder_seq_len()
    assert 100 < seq_len <= selftest.MAX_LADDER_SEQ_LEN
    [note] = selftest.shape_notes(seq_len)
    assert "1000000" in note


def test_nth_segment_end_follows_the_segment_rule(build) -> None:
    for segments in (
        "{kind: constant, length: 3}",
        "{kind: logarithmic, length: 2}",
        "{kind: explicit, boundaries: [3, 7, 12]}",
    ):
        selftest, spec_module = build(tiny(f"rule{len(segments)}", segments=segments))
        end, walked = spec_module.segment_end(0), []
        while end is not None and len(walked) < 6:
            walked.append(end)
            end = spec_module.segment_end(end)
        assert [selftest.nth_segment_end(n) for n in range(1, len(walked) + 1)] == walked
    selftest, _ = build(tiny("never", segments="{kind: none}"))
    assert selftest.nth_segment_end(1) is None
    assert selftest.shape_notes(5) == []


def test_shape_notes_name_what_a_short_length_misses(build) -> None:
    selftest, _ = build(repo_spec("ssc"))
    [note] = selftest.shape_notes(200)
    assert "T = 200" in note and "no segment end" in note and "256" in note
    # The old default: 3 cached memories for top_k 4, so every number equals grm's.
    [note] = selftest.shape_notes(897)
    assert "top_k" in note and "T > 1280" in note
    assert selftest.shape_notes(1281) == []


@pytest.mark.parametrize("text", ["2 x 512 x 4 x 64 x 64", "2x512x4x64x64", " 2 X 512x4 x64 x 64 "])
def test_parse_shape_reads_the_format_the_table_prints(build, text: str) -> None:
    selftest, _ = build(repo_spec("grm"))
    assert selftest.parse_shape(text) == (2, 512, 4, 64, 64)


@pytest.mark.parametrize("text", ["2 x 512 x 4 x 64", "2 x 5 12 x 4 x 64 x 64", "2xx4x64x64x1"])
def test_parse_shape_still_refuses_what_is_not_five_numbers(build, text: str) -> None:
    selftest, _ = build(repo_spec("grm"))
    with pytest.raises(ValueError, match="BxTxHxKxV"):
        selftest.parse_shape(text)


TINY_GRM = spec_text(name="tiny_grm")  # segments of 8 tokens, chunks of 4


def test_validate_warns_about_a_shape_that_reaches_no_segment_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("tiny_grm.yaml").write_text(TINY_GRM)
    runner = CliRunner()
    assert runner.invoke(app, ["build", "tiny_grm.yaml"]).exit_code == 0
    args = ["validate", "tiny_grm.yaml", "--backend", "torch", "--dtype", "float32"]
    result = runner.invoke(app, [*args, "--shape", "1x6x2x8x8"])
    # Still run (a short check is useful), but the user is told what it leaves out.
    assert result.exit_code == 0, result.output
    assert "warning: shape 1 x 6 x 2 x 8 x 8: T = 6 reaches no segment end" in result.stderr
    result = runner.invoke(app, [*args, "--shape", "1x6x2x8x8", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    [warning] = report["warnings"]
    assert "T = 6 reaches no segment end" in warning
    # A shape that reaches every segment end the spec needs: no warning.
    result = runner.invoke(app, [*args, "--shape", "1x29x2x8x8", "--json"])
    assert json.loads(result.stdout)["warnings"] == []


def test_the_ladder_runs_on_one_cpu_thread_and_gives_the_count_back(
    build, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fp64 reference steps one token at a time: on a busy 2-core CPU two threads made
    # it 13x slower than one (specs/ssc.yaml, 160 s against 12 s).
    import torch

    selftest, _ = build(repo_spec("grm"))
    threads_seen: list[int] = []

    def record(*args, **kwargs) -> list:
        threads_seen.append(torch.get_num_threads())
        return []

    monkeypatch.setattr(selftest, "check_against_reference", record)
    monkeypatch.setattr(selftest, "check_streaming", record)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        selftest.run_ladder(["torch"], ("float32",), quick=True, device="cpu")
        assert threads_seen == [1, 1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
