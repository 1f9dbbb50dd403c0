"""The `mcgen` command line end to end, in a temporary directory: build, validate,
inspect and --version, with their exit codes, messages and --json documents."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from mcgen import __version__
from mcgen.cli import app
from mcgen.codegen.package import MANIFEST, package_files
from mcgen.passes.pipeline import compile_spec
from mcgen.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
# `file:line:col: dotted.path: message`, one problem per line.
PROBLEM = re.compile(r"^(?P<file>\S+):(?P<line>\d+):(?P<col>\d+): (?P<path>[\w.]+): (?P<msg>.+)$")

TINY = """\
name: {name}
memory: {{recurrence: linear, heads: 2, key_dim: 8, value_dim: 8}}
cache:
  segments: {{kind: constant, length: 8}}
aggregation: {{kind: {aggregation}}}
layer: {{d_model: {d_model}}}
compute: {{chunk_size: 4}}
"""


def tiny_spec(name: str, aggregation: str = "grm", d_model: int = 16) -> str:
    return TINY.format(name=name, aggregation=aggregation, d_model=d_model)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch project: copies of specs/grm.yaml and specs/soup.yaml, tiny specs, cwd here."""
    specs = tmp_path / "specs"
    specs.mkdir()
    for name in ("grm", "soup"):
        shutil.copy(ROOT / "specs" / f"{name}.yaml", specs / f"{name}.yaml")
    (specs / "tiny_grm.yaml").write_text(tiny_spec("tiny_grm"))
    (specs / "tiny_ssc.yaml").write_text(tiny_spec("tiny_ssc", "ssc, top_k: 2"))
    (specs / "bad.yaml").write_text(
        tiny_spec("bad").replace("value_dim: 8}", "value_dim: 8, colour: red}") + "extra: {}\n"
    )
    (specs / "wrong_type.yaml").write_text(
        tiny_spec("wrong_type").replace("heads: 2", "heads: two")
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def contract_files(spec_path: str) -> set[str]:
    """The files a build of the spec writes: the package's for its plan (Triton kernels for
    matrix memories), and the manifest."""
    return {*package_files(compile_spec(load_spec(spec_path).spec).plan), MANIFEST}


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path`, relative name -> bytes (empty when path does not exist)."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def problem_lines(stderr: str) -> list[re.Match[str]]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    matches = [PROBLEM.match(line) for line in lines]
    assert lines and all(matches), f"not `file:line:col: path: message` lines:\n{stderr}"
    return [m for m in matches if m]


# --- --version --------------------------------------------------------------------------


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"mcgen {__version__}"


def test_no_command_shows_the_commands() -> None:
    result = run()
    for command in ("build", "validate", "inspect"):
        assert command in result.output


# --- build ------------------------------------------------------------------------------


def test_build_writes_the_contract_files(workdir: Path) -> None:
    result = run("build", "specs/grm.yaml")
    assert result.exit_code == 0, result.output
    package = workdir / "generated" / "grm"
    assert {p.name for p in package.iterdir()} == contract_files("specs/grm.yaml")
    assert "backend_triton.py" in contract_files("specs/grm.yaml")
    assert "built grm" in result.stdout
    # Built from the same spec as the committed package (byte identity: test_codegen).
    manifest = json.loads((package / MANIFEST).read_text())
    committed = json.loads((ROOT / "generated" / "grm" / MANIFEST).read_text())
    assert manifest["spec_hash"] == committed["spec_hash"]
    assert (package / "__init__.py").read_text().splitlines()[1] == (
        "# regenerate with `mcgen build specs/grm.yaml`."
    )
    # Nothing but the package is left in the out dir (no staging directories).
    assert [p.name for p in (workdir / "generated").iterdir()] == ["grm"]


def test_build_json_names_the_package(workdir: Path) -> None:
    result = run("build", "specs/soup.yaml", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    [built] = document["built"]
    assert built["spec"] == "specs/soup.yaml"
    assert Path(built["package"]) == Path("generated/soup")
    assert any("soup" in note and "grm" in note for note in built["notes"])
    assert (workdir / "generated" / "soup" / "__init__.py").is_file()


def test_build_several_specs_at_once(workdir: Path) -> None:
    result = run("build", "specs/grm.yaml", "specs/tiny_grm.yaml", "specs/tiny_ssc.yaml")
    assert result.exit_code == 0, result.output
    generated = workdir / "generated"
    assert sorted(p.name for p in generated.iterdir()) == ["grm", "tiny_grm", "tiny_ssc"]
    for name in ("grm", "tiny_grm", "tiny_ssc"):
        assert {p.name for p in (generated / name).iterdir()} == contract_files(
            f"specs/{name}.yaml"
        )
        assert f"built {name}" in result.stdout


def test_build_out_dir(workdir: Path) -> None:
    result = run("build", "specs/tiny_grm.yaml", "--out", "elsewhere/pkgs")
    assert result.exit_code == 0, result.output
    package = workdir / "elsewhere" / "pkgs" / "tiny_grm"
    assert {p.name for p in package.iterdir()} == contract_files("specs/tiny_grm.yaml")
    assert not (workdir / "generated").exists()
    # The header's command regenerates this very package, --out included.
    header = (package / "ops.py").read_text().splitlines()[1]
    assert header == "# regenerate with `mcgen build specs/tiny_grm.yaml --out elsewhere/pkgs`."


def test_rebuild_replaces_the_package(workdir: Path) -> None:
    assert run("build", "specs/tiny_grm.yaml").exit_code == 0
    package = workdir / "generated" / "tiny_grm"
    first = tree(package)
    (package / "ops.py").write_text("edited\n")
    assert run("build", "specs/tiny_grm.yaml").exit_code == 0
    assert tree(package) == first
    # A file mcgen did not write would be lost with the package: the rebuild is refused.
    (package / "notes.py").write_text("mine\n")
    result = run("build", "specs/tiny_grm.yaml")
    assert result.exit_code == 2
    assert "notes.py" in result.stderr
    assert (package / "notes.py").read_text() == "mine\n"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("bad.yaml", [("2", "memory.colour", "unknown field"), ("8", "extra", "unknown field")]),
        ("wrong_type.yaml", [("2", "memory.heads", "integer")]),
    ],
)
def test_build_bad_spec_exits_2_with_located_messages_and_writes_nothing(
    workdir: Path, spec: str, expected: list[tuple[str, str, str]]
) -> None:
    result = run("build", f"specs/{spec}", "--out", "out")
    assert result.exit_code == 2
    assert result.stdout == ""
    found = problem_lines(result.stderr)
    assert [(m["line"], m["path"]) for m in found] == [(line, path) for line, path, _ in expected]
    for match, (_, _, fragment) in zip(found, expected, strict=True):
        assert match["file"] == f"specs/{spec}"
        assert fragment in match["msg"]
    assert "Traceback" not in result.output
    assert not (workdir / "out").exists()


def test_one_bad_spec_stops_every_spec_from_being_written(workdir: Path) -> None:
    assert run("build", "specs/tiny_ssc.yaml").exit_code == 0
    before = tree(workdir / "generated")
    (workdir / "specs" / "tiny_ssc.yaml").write_text(tiny_spec("tiny_ssc", "ssc, top_k: 3"))
    result = run("build", "specs/tiny_grm.yaml", "specs/tiny_ssc.yaml", "specs/bad.yaml")
    assert result.exit_code == 2
    assert all(m["file"] == "specs/bad.yaml" for m in problem_lines(result.stderr))
    # Neither the good spec's new package nor the changed one's rebuild was written.
    assert tree(workdir / "generated") == before
    assert not (workdir / "generated" / "tiny_grm").exists()


def test_two_specs_with_one_name_are_refused(workdir: Path) -> None:
    (workdir / "specs" / "copy.yaml").write_text(tiny_spec("tiny_grm"))
    result = run("build", "specs/tiny_grm.yaml", "specs/copy.yaml")
    assert result.exit_code == 2
    assert "tiny_grm" in result.stderr
    assert not (workdir / "generated").exists()


@pytest.mark.parametrize("command", ["build", "validate", "inspect", "export"])
def test_a_missing_spec_file_is_named_without_a_made_up_position(
    workdir: Path, command: str
) -> None:
    args = ["--out", "exported"] if command == "export" else []
    result = run(command, "specs/nothing.yaml", *args)
    assert result.exit_code == 2
    assert result.stderr == "file not found: specs/nothing.yaml\n"
    assert not (workdir / "generated").exists()


# --- validate ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny_grm", "tiny_ssc"])
def test_validate_prints_a_table_and_passes(workdir: Path, name: str) -> None:
    assert run("build", f"specs/{name}.yaml").exit_code == 0
    result = run("validate", f"specs/{name}.yaml", "--quick", "--dtype", "float32")
    assert result.exit_code == 0, result.output
    assert "relative RMS error" in result.stdout
    for column in ("backend", "dtype", "check", "tolerance"):
        assert column in result.stdout
    for quantity in ("output", "grad q", "grad k", "grad v", "decode"):
        assert quantity in result.stdout
    assert re.search(r"\b[1-9]\d* passed, 0 failed\b", result.stdout), result.stdout
    assert "FAIL" not in result.stdout


@pytest.mark.slow
def test_validate_json(workdir: Path) -> None:
    assert run("build", "specs/tiny_ssc.yaml").exit_code == 0
    result = run("validate", "specs/tiny_ssc.yaml", "--quick", "--dtype", "float32", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] is True
    assert Path(report["package"]).name == "tiny_ssc"
    assert report["checks"]
    quantities = {"torch": set(), "triton": set()}
    for check in report["checks"]:
        assert check["passed"] is True
        assert check["dtype"] == "float32"
        assert 0 <= check["error"] <= check["tolerance"] <= 1e-4
        quantities[check["backend"]].add(check["quantity"])
    # Every generated backend that runs here: triton too, in the interpreter (conftest.py).
    for backend in ("torch", "triton"):
        assert {"output", "grad q", "grad k", "grad v", "grad u"} <= quantities[backend]
    assert report["skipped"] == []


@pytest.mark.slow
def test_validate_triton_by_name_and_what_it_skips(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run("build", "specs/tiny_grm.yaml").exit_code == 0
    args = ("validate", "specs/tiny_grm.yaml", "--quick", "--dtype", "float32", "--json")
    # Without CUDA and without the interpreter, the default leaves triton out, and says so.
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    result = run(*args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {c["backend"] for c in report["checks"]} == {"torch"}
    [skipped] = report["skipped"]
    assert skipped.startswith("triton: no CUDA device here")
    # Asked for by name, it runs in Triton's interpreter (set before its kernels load);
    # float64 is skipped: the kernels compute in float32.
    result = run(*args, "--backend", "triton", "--dtype", "float64")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {c["backend"] for c in report["checks"]} == {"triton"}
    assert {c["dtype"] for c in report["checks"]} == {"float32"}
    assert report["skipped"] == ["triton float64: the kernels compute in float32"]
    assert all(c["passed"] for c in report["checks"])


def test_validate_at_shapes_given_on_the_command_line(workdir: Path) -> None:
    assert run("build", "specs/tiny_grm.yaml").exit_code == 0
    args = ("validate", "specs/tiny_grm.yaml", "--backend", "torch", "--dtype", "float32")
    shapes = ("1x19x2x8x12", "2X7x1x4x4")  # K != V, a single head, an upper-case X
    result = run(*args, "--shape", shapes[0], "--shape", shapes[1], "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    # Only the shapes asked for, each with its reference and streaming checks.
    assert {c["shape"] for c in report["checks"]} == {"1 x 19 x 2 x 8 x 12", "2 x 7 x 1 x 4 x 4"}
    for shape in ("1 x 19 x 2 x 8 x 12", "2 x 7 x 1 x 4 x 4"):
        quantities = {c["quantity"] for c in report["checks"] if c["shape"] == shape}
        assert {"output", "grad q", "grad v", "pieces", "decode"} <= quantities
    assert all(c["passed"] for c in report["checks"])


@pytest.mark.parametrize("shape", ["2x64x4x16", "2x64x4x16x0", "2x64x4xKx16"])
def test_validate_refuses_a_bad_shape(workdir: Path, shape: str) -> None:
    assert run("build", "specs/tiny_grm.yaml").exit_code == 0
    result = run("validate", "specs/tiny_grm.yaml", "--shape", shape)
    assert result.exit_code == 2
    assert "--shape" in result.stderr and "BxTxHxKxV" in result.stderr
    assert repr(shape) in result.stderr.replace("\n", "")


def test_validate_refuses_a_package_never_built(workdir: Path) -> None:
    result = run("validate", "specs/tiny_grm.yaml", "--quick", "--dtype", "float32")
    assert result.exit_code == 2
    assert "generated/tiny_grm" in result.stderr
    assert "mcgen build" in result.stderr


def test_validate_refuses_an_edited_package(workdir: Path) -> None:
    assert run("build", "specs/tiny_grm.yaml").exit_code == 0
    ops = workdir / "generated" / "tiny_grm" / "ops.py"
    ops.write_text(ops.read_text() + "\nBACKENDS = ()\n")
    result = run("validate", "specs/tiny_grm.yaml", "--quick", "--dtype", "float32")
    assert result.exit_code == 2
    assert "ops.py" in result.stderr
    assert "edited since it was generated" in result.stderr
    # A deleted file is drift too.
    ops.unlink()
    result = run("validate", "specs/tiny_grm.yaml", "--quick", "--dtype", "float32")
    assert result.exit_code == 2
    assert "ops.py: missing" in result.stderr


def test_validate_refuses_a_package_built_from_an_older_spec(workdir: Path) -> None:
    assert run("build", "specs/tiny_grm.yaml").exit_code == 0
    (workdir / "specs" / "tiny_grm.yaml").write_text(tiny_spec("tiny_grm", d_model=32))
    result = run("validate", "specs/tiny_grm.yaml", "--quick", "--dtype", "float32")
    assert result.exit_code == 2
    assert "another version of spec `tiny_grm`" in result.stderr
    assert "rebuild" in result.stderr


def test_validate_with_package_option_and_bad_dtype(workdir: Path) -> None:
    assert run("build", "specs/tiny_grm.yaml", "--out", "pkgs").exit_code == 0
    result = run("validate", "specs/tiny_grm.yaml", "--package", "pkgs/tiny_grm", "--dtype", "fp8")
    assert result.exit_code == 2
    assert "--dtype" in result.stderr
    assert "fp8" in result.stderr


def test_validate_bad_spec_exits_2(workdir: Path) -> None:
    result = run("validate", "specs/wrong_type.yaml", "--quick")
    assert result.exit_code == 2
    [problem] = problem_lines(result.stderr)
    assert problem["path"] == "memory.heads"


def test_validate_after_build_out_says_how_to_name_the_package(workdir: Path) -> None:
    assert run("build", "specs/tiny_grm.yaml", "--out", "pkgs").exit_code == 0
    result = run("validate", "specs/tiny_grm.yaml", "--quick", "--dtype", "float32")
    assert result.exit_code == 2
    assert "generated/tiny_grm" in result.stderr
    assert "--package DIR/tiny_grm" in result.stderr.replace("\n", " ")
    # --package takes the package, or the --out folder that holds it.
    for package in ("pkgs/tiny_grm", "pkgs"):
        result = run(
            "validate", "specs/tiny_grm.yaml", "--package", package, "--quick", "--json",
            "--dtype", "float32", "--backend", "torch",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert Path(json.loads(result.stdout)["package"]) == workdir / "pkgs" / "tiny_grm"


def test_validate_accepts_the_shape_format_its_table_prints(workdir: Path) -> None:
    assert run("build", "specs/tiny_grm.yaml").exit_code == 0
    args = ("validate", "specs/tiny_grm.yaml", "--backend", "torch", "--dtype", "float32")
    result = run(*args, "--shape", "1 x 29 x 2 x 8 x 12", "--json")
    assert result.exit_code == 0, result.output
    assert {c["shape"] for c in json.loads(result.stdout)["checks"]} == {"1 x 29 x 2 x 8 x 12"}


def test_validate_table_keeps_each_row_on_one_line_in_a_pipe(workdir: Path) -> None:
    assert run("build", "specs/tiny_grm.yaml").exit_code == 0
    args = ("validate", "specs/tiny_grm.yaml", "--backend", "torch", "--dtype", "bfloat16")
    result = run(*args, "--shape", "1x29x2x8x12")
    assert result.exit_code == 0, result.output
    # The table is 87 columns wide: rich wrapped it at 80, off a terminal.
    assert max(len(line) for line in result.stdout.splitlines()) > 80
    rows = [line for line in result.stdout.splitlines() if "torch" in line]
    assert rows and all("1 x 29 x 2 x 8 x 12" in row and row.rstrip().endswith("│") for row in rows)
    assert all("bfloat16" in row and "ok" in row for row in rows)


def test_validate_notes_stay_on_one_line_in_a_pipe(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run("build", "specs/tiny_grm.yaml").exit_code == 0
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # triton is skipped, with an 87-column note
    result = run("validate", "specs/tiny_grm.yaml", "--quick", "--dtype", "float32")
    assert result.exit_code == 0, result.output
    [skipped] = [line for line in result.stdout.splitlines() if line.startswith("skipped")]
    assert skipped.endswith("(--backend triton runs it in Triton's interpreter, slowly)")
    # The rewrites `build` prints are whole lines too.
    result = run("build", "specs/soup.yaml")
    [note] = [line for line in result.stdout.splitlines() if line.startswith("  - soup_to_grm")]
    assert note.endswith("per token.")


def test_inspect_cost_table_keeps_each_row_on_one_line_in_a_pipe(workdir: Path) -> None:
    # The spec's name heads a column: a long one makes the table wider than 80 columns.
    name = "a_long_name_that_makes_the_cost_table_wider_than_eighty_columns"
    (workdir / "specs" / "long.yaml").write_text(tiny_spec(name))
    result = run("inspect", "specs/long.yaml")
    assert result.exit_code == 0, result.output
    metrics = json.loads(run("inspect", "specs/long.yaml", "--json").stdout)["cost"]["table"]
    lines = result.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("┡"))
    rows = lines[head + 1 : next(i for i, line in enumerate(lines) if line.startswith("└"))]
    assert len(rows) == len(metrics)  # one line each, none wrapped onto a second
    assert any(name in line and len(line) > 80 for line in result.stdout.splitlines())


# --- inspect ----------------------------------------------------------------------------


def test_inspect_prints_both_irs_the_rewrite_and_the_cost_table(workdir: Path) -> None:
    result = run("inspect", "specs/soup.yaml")
    assert result.exit_code == 0, result.output
    text = result.stdout
    before, after = text.index("IR as lowered"), text.index("IR after passes")
    assert before < after
    # The lowered IR aggregates with soup, the rewritten one with grm.
    assert "kind=soup" in text[before:after]
    assert "kind=grm" in text[after:]
    assert "soup_to_grm" in text
    assert re.search(r"soup\s+->\s+grm", text)
    assert "softmax attention" in text
    for metric in ("FLOPs per token", "decode state"):
        assert metric in text
    assert "digraph" not in text


def test_inspect_dot_prints_two_digraphs_only(workdir: Path) -> None:
    result = run("inspect", "specs/soup.yaml", "--dot")
    assert result.exit_code == 0, result.output
    documents = [d for d in re.split(r"(?m)^(?=digraph )", result.stdout) if d]
    assert len(documents) == 2, result.stdout[:500]
    for document in documents:
        assert document.startswith('digraph "soup" {')
        assert document.rstrip().endswith("}")
        assert "->" in document
    assert "IR as lowered" not in result.stdout
    assert "FLOPs" not in result.stdout


def test_inspect_json(workdir: Path) -> None:
    result = run("inspect", "specs/soup.yaml", "--json", "--seq-len", "1024", "--batch", "2")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["name"] == "soup"
    assert (report["seq_len"], report["batch"]) == (1024, 2)
    for stage in ("before", "after"):
        assert report["ir"][stage]["text"].strip()
        assert report["ir"][stage]["dot"].startswith("digraph")
    assert "kind=soup" in report["ir"]["before"]["text"]
    assert "kind=grm" in report["ir"]["after"]["text"]
    assert any(note.startswith("soup_to_grm") for note in report["notes"])
    table = report["cost"]["table"]
    assert table
    for row in table:
        assert {"metric", "unit", "spec", "attention", "ratio"} <= set(row)
        assert row["spec"] >= 0 and row["attention"] > 0


def test_inspect_bad_spec_exits_2(workdir: Path) -> None:
    result = run("inspect", "specs/bad.yaml")
    assert result.exit_code == 2
    assert {m["path"] for m in problem_lines(result.stderr)} == {"memory.colour", "extra"}
    assert result.stdout == ""


# --- --json errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("build", "specs/bad.yaml"), "memory.colour"),
        (("build", "specs/nothing.yaml"), "file not found: specs/nothing.yaml"),
        (("validate", "specs/tiny_grm.yaml"), "mcgen build"),
        (("validate", "specs/grm.yaml", "--dtype", "fp8"), "fp8"),
        (("validate", "specs/grm.yaml", "--shape", "2x64"), "BxTxHxKxV"),
        (("validate",), "SPEC"),
        (("validate", "--exported", "nowhere"), "nowhere"),
        (("inspect", "specs/wrong_type.yaml"), "memory.heads"),
        (("inspect", "specs/grm.yaml", "--seq-len", "0"), "--seq-len"),
        (("export", "specs/bad.yaml", "--out", "exported"), "memory.colour"),
        (("build", "specs/grm.yaml", "--colour"), "--colour"),
        (("bench", "specs/nothing.yaml"), "file not found"),
        (("bench", "specs/tiny_grm.yaml", "--provider", "nope"), "unknown provider nope"),
        (("search", "report", "no_study"), "no study 'no_study'"),
        (("search", "status", "no_study"), "no study 'no_study'"),
        (("search", "nothing.yaml"), "file not found: nothing.yaml"),
        (("search", "report", "no_study", "--bogus"), "--bogus"),
    ],
)
def test_json_errors_are_one_json_object_on_stdout(
    workdir: Path, args: tuple[str, ...], fragment: str
) -> None:
    if args[1:2] == ("specs/grm.yaml",) and args[0] == "validate":
        assert run("build", "specs/grm.yaml").exit_code == 0
    plain = run(*args)
    result = run(*args, "--json")
    assert plain.exit_code == result.exit_code == 2
    assert result.stderr == ""
    error = json.loads(result.stdout)["error"]
    assert fragment in error["message"]
    assert error["exit_code"] == 2


def test_json_spec_errors_list_each_problem_with_its_position(workdir: Path) -> None:
    result = run("build", "specs/bad.yaml", "--json")
    assert result.exit_code == 2
    problems = json.loads(result.stdout)["error"]["problems"]
    assert [(p["line"], p["path"]) for p in problems] == [(2, "memory.colour"), (8, "extra")]
    assert all(p["file"] == "specs/bad.yaml" and p["message"] for p in problems)
