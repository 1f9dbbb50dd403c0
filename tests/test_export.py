"""`mcgen export` and `mcgen validate --exported`, end to end in temporary folders.

The export of one tiny GRM spec is made once (with its quick ladder) and copied by the
tests that change it. The slow test builds a wheel of it and installs it, with torch,
into a fresh virtual environment that has no mcgen.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

import mcgen.export
from mcgen import __version__
from mcgen.cli import app
from mcgen.codegen.package import MANIFEST, package_files
from mcgen.export import ExportResult, export_spec
from mcgen.passes.pipeline import compile_spec
from mcgen.spec import parse_spec, spec_hash
from mcgen.validate import CheckResult, ValidationReport

TINY = """\
name: tiny_grm
memory: {{recurrence: linear, heads: 2, key_dim: 8, value_dim: 8}}
cache:
  segments: {{kind: constant, length: 8}}
aggregation: {{kind: grm}}
layer: {{d_model: {d_model}}}
compute: {{chunk_size: 4}}
"""


def tiny(d_model: int = 16) -> str:
    return TINY.format(d_model=d_model)


# The package's files: a linear memory's include the Triton kernels and their glue.
PACKAGE_FILES = package_files(compile_spec(parse_spec(tiny())).plan)


def expected_files(name: str) -> set[str]:
    package = {f"{name}/{file_name}" for file_name in (*PACKAGE_FILES, MANIFEST)}
    return package | {"pyproject.toml", "README.md", f"tests/test_{name}.py"}


def load_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads(path.read_text())


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def tree(path: Path) -> dict[str, bytes]:
    """Every file under path, relative posix name -> bytes (empty when path does not exist)."""
    if not path.exists():
        return {}
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def header_command(text: str) -> str:
    """The command a file's header comment names: its comment lines joined (a long command
    wraps the header over more than two lines)."""
    comment = []
    for line in text.splitlines():
        if not line.startswith("# "):
            break
        comment.append(line[2:])
    found = re.search(r"regenerate with `([^`]+)`\.$", " ".join(comment))
    assert found, text[:300]
    return found[1]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest(export_dir: Path, name: str = "tiny_grm") -> dict:
    return json.loads((export_dir / name / MANIFEST).read_text())


def subprocess_env() -> dict[str, str]:
    """This environment, less what would tie a child pytest to the xdist worker running us."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_exported_pytest(
    export_dir: Path, python: str = sys.executable
) -> subprocess.CompletedProcess:
    """`python -m pytest` from the export's folder: its pyproject.toml says where the tests are."""
    return subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=export_dir,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("specs") / "tiny_grm.yaml"
    path.write_text(tiny())
    return path


@pytest.fixture(scope="module")
def first_export(tmp_path_factory: pytest.TempPathFactory, spec_file: Path) -> tuple[Path, Result]:
    """One export of the tiny spec, made with the quick ladder; tests must not change it."""
    out = tmp_path_factory.mktemp("exports") / "tiny_project"
    result = run("export", spec_file, "--out", out)
    assert result.exit_code == 0, result.output
    return out, result


@pytest.fixture
def exported(first_export: tuple[Path, Result]) -> Path:
    return first_export[0]


@pytest.fixture
def export_copy(exported: Path, tmp_path: Path) -> Path:
    """A copy of the export that a test may edit."""
    return Path(shutil.copytree(exported, tmp_path / "copy"))


# --- export -------------------------------------------------------------------------------


def test_export_writes_a_standalone_project(
    first_export: tuple[Path, Result], spec_file: Path
) -> None:
    out, result = first_export
    assert set(tree(out)) == expected_files("tiny_grm")
    assert "exported tiny_grm" in result.stdout
    assert "checks passed" in result.stdout
    # A progress line while the ladder ran (plain lines when not on a terminal).
    assert re.search(r"testing tiny_grm: torch float32", result.stderr), result.stderr
    # Nothing but the project is left beside it (no staging or backup folders).
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    # Every header names the export command, which makes the export again.
    command = f"mcgen export {spec_file.as_posix()} --out {out.as_posix()} --name tiny_grm"
    for path in [*(out / "tiny_grm").glob("*.py"), out / "tests" / "test_tiny_grm.py"]:
        assert header_command(path.read_text()) == command, path
    assert f"`{command}`" in (out / "README.md").read_text()


def test_the_manifest_records_the_spec_the_files_and_the_environment(
    exported: Path, spec_file: Path
) -> None:
    document = manifest(exported)
    assert document["name"] == "tiny_grm"
    assert document["spec_hash"] == spec_hash(parse_spec(tiny()))
    # The package's own manifest, every file hashed as it lies on disk.
    assert set(document["files"]) == set(PACKAGE_FILES)
    for file_name, digest in document["files"].items():
        assert sha256(exported / "tiny_grm" / file_name) == digest, file_name
    section = document["export"]
    assert section["name"] == "tiny_grm"
    assert section["mcgen_version"] == __version__
    assert section["command"] == (
        f"mcgen export {spec_file.as_posix()} --out {exported.as_posix()} --name tiny_grm"
    )
    assert set(section["files"]) == {"pyproject.toml", "README.md", "tests/test_tiny_grm.py"}
    for relative, digest in section["files"].items():
        assert sha256(exported / relative) == digest, relative
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = None
    assert section["tested_with"] == {
        "torch": torch.__version__,
        "triton": triton,
        "numpy": importlib.metadata.version("numpy"),
    }


def test_pyproject_makes_an_installable_project(exported: Path) -> None:
    project = load_toml(exported / "pyproject.toml")
    assert project["build-system"]["build-backend"] == "hatchling.build"
    meta = project["project"]
    assert meta["name"] == "tiny-grm"
    assert meta["version"] == f"{__version__}+{manifest(exported)['spec_hash'][:12]}"
    assert meta["readme"] == "README.md"
    assert meta["dependencies"] == ["torch>=2.4", "numpy"]
    assert any(d.startswith("triton") for d in meta["optional-dependencies"]["triton"])
    assert project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["tiny_grm"]
    ini = project["tool"]["pytest"]["ini_options"]
    assert ini["pythonpath"] == ["."]
    assert ini["testpaths"] == ["tests"]


def test_no_file_of_the_export_imports_mcgen(exported: Path) -> None:
    python_files = sorted(exported.rglob("*.py"))
    assert len(python_files) == len(PACKAGE_FILES) + 1
    for path in python_files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            else:
                continue
            assert not any(n.split(".")[0] == "mcgen" for n in names), (path, names)
    assert "import mcgen" not in (exported / "README.md").read_text()


def test_the_readme_says_where_it_came_from_and_its_example_runs(exported: Path) -> None:
    readme = (exported / "README.md").read_text()
    digest = manifest(exported)["spec_hash"]
    for fragment in (digest, "pip install", "python -m pytest", "mc_forward", "mc_step"):
        assert fragment in readme
    assert "from tiny_grm import MCLayer" in readme
    [example] = re.findall(r"```python\n(.*?)```", readme, re.S)
    done = subprocess.run(
        [sys.executable, "-c", example],
        cwd=exported,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # Its last line checks that the cache holds what state_size counts.
    assert done.stdout.splitlines()[-1] == "True"


def test_export_json(tmp_path: Path, spec_file: Path) -> None:
    result = run("export", spec_file, "--out", tmp_path / "out", "--no-test", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)["exported"]
    assert document["name"] == "tiny_grm"
    assert Path(document["path"]) == tmp_path / "out"
    assert set(document["files"]) == expected_files("tiny_grm")
    assert document["tested_with"] is None
    assert document["checks"] is None
    assert document["replaced"] is False
    assert result.stderr == ""  # no progress lines with --json


def test_export_spec_is_a_plain_function(tmp_path: Path, spec_file: Path) -> None:
    steps = []

    def progress(description: str, total: int):
        steps.append((description, total))
        return lambda step: steps.append(step)

    result = export_spec(spec_file, tmp_path / "out", progress=progress)
    assert isinstance(result, ExportResult)
    assert result.package_dir == tmp_path / "out" / "tiny_grm"
    assert result.report is not None and result.report.passed
    # One quick step per backend that runs here: torch, and triton in Triton's interpreter
    # (conftest.py sets TRITON_INTERPRET=1; without it or CUDA, triton is skipped).
    assert steps[0] == ("testing tiny_grm", 2)
    assert {c.backend for c in result.report.checks} == {"torch", "triton"}
    assert {k: v.encode() for k, v in result.files.items()} == tree(tmp_path / "out")


@pytest.mark.slow
def test_name_renames_the_import_package(tmp_path: Path, spec_file: Path) -> None:
    out = tmp_path / "renamed"
    result = run("export", spec_file, "--out", out, "--name", "my_layer", "--no-test")
    assert result.exit_code == 0, result.output
    assert set(tree(out)) == expected_files("my_layer")
    assert load_toml(out / "pyproject.toml")["project"]["name"] == "my-layer"
    document = manifest(out, "my_layer")
    assert document["export"]["name"] == "my_layer"
    assert document["export"]["tested_with"] is None
    assert document["spec_hash"] == spec_hash(parse_spec(tiny()))  # still the spec's hash
    test_source = (out / "tests" / "test_my_layer.py").read_text()
    imported = {
        node.module.split(".")[0]
        for node in ast.walk(ast.parse(test_source))
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert "my_layer" in imported and "tiny_grm" not in imported
    assert "import my_layer" in test_source
    # The exported tests pass, run with pytest from the project folder in a subprocess.
    done = run_exported_pytest(out)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b\d+ passed\b", done.stdout), done.stdout
    assert not any(p.name in ("__pycache__", ".pytest_cache") for p in out.rglob("*"))


@pytest.mark.parametrize("name", ["Bad-Name", "os", "x; import os", "class", "9lives", "__x"])
def test_a_bad_name_is_refused_and_nothing_written(tmp_path: Path, name: str) -> None:
    (tmp_path / "tiny.yaml").write_text(tiny())
    result = run("export", tmp_path / "tiny.yaml", "--out", tmp_path / "out", "--name", name)
    assert result.exit_code == 2
    assert "--name" in result.stderr
    assert "Traceback" not in result.output
    assert sorted(tree(tmp_path)) == ["tiny.yaml"]


def test_a_foreign_folder_is_refused_and_left_as_it_was(tmp_path: Path, spec_file: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    result = run("export", spec_file, "--out", out)
    assert result.exit_code == 2
    assert "not empty" in result.stderr
    assert tree(tmp_path) == {"mine/notes.txt": b"mine\n"}
    # A file where the folder would go is refused too.
    result = run("export", spec_file, "--out", out / "notes.txt")
    assert result.exit_code == 2
    assert tree(tmp_path) == {"mine/notes.txt": b"mine\n"}


def test_an_export_of_another_name_is_refused(export_copy: Path, spec_file: Path) -> None:
    before = tree(export_copy)
    result = run("export", spec_file, "--out", export_copy, "--name", "other", "--no-test")
    assert result.exit_code == 2
    assert "tiny_grm" in result.stderr
    assert tree(export_copy) == before


def test_a_previous_export_is_replaced_whole(export_copy: Path, spec_file: Path) -> None:
    (export_copy / "stray.txt").write_text("left over\n")
    (export_copy / "tiny_grm" / "stray.py").write_text("x = 1\n")
    result = run("export", spec_file, "--out", export_copy, "--no-test")
    assert result.exit_code == 0, result.output
    assert "re-exported tiny_grm" in result.stdout
    assert set(tree(export_copy)) == expected_files("tiny_grm")
    assert manifest(export_copy)["export"]["tested_with"] is None
    assert [p.name for p in export_copy.parent.iterdir()] == [export_copy.name]


def test_an_empty_folder_is_exported_into(tmp_path: Path, spec_file: Path) -> None:
    (tmp_path / "out").mkdir()
    result = run("export", spec_file, "--out", tmp_path / "out", "--no-test")
    assert result.exit_code == 0, result.output
    assert set(tree(tmp_path / "out")) == expected_files("tiny_grm")


def failing_ladder(package_dir: Path, progress=None) -> ValidationReport:
    checks = [
        CheckResult("torch", "float32", "2 x 29 x 2 x 8 x 8", "output", 1e-7, 1e-5, True),
        CheckResult("torch", "float32", "2 x 29 x 2 x 8 x 8", "grad q", 3e-2, 2e-5, False),
    ]
    return ValidationReport(package_dir, checks, [])


def test_a_failing_ladder_refuses_the_export(
    tmp_path: Path, spec_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mcgen.export, "run_quick_ladder", failing_ladder)
    out = tmp_path / "new" / "deeper" / "out"
    result = run("export", spec_file, "--out", out)
    assert result.exit_code == 1
    assert "failed 1 of 2 checks" in result.stderr
    assert "grad q" in result.stderr
    assert "nothing was exported" in result.stderr
    assert not (tmp_path / "new").exists()  # not even the parents it made
    assert list(tmp_path.iterdir()) == []


def test_a_failing_ladder_leaves_a_previous_export_as_it_was(
    export_copy: Path, spec_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = tree(export_copy)
    monkeypatch.setattr(mcgen.export, "run_quick_ladder", failing_ladder)
    result = run("export", spec_file, "--out", export_copy)
    assert result.exit_code == 1
    assert tree(export_copy) == before
    assert [p.name for p in export_copy.parent.iterdir()] == [export_copy.name]


def test_no_test_skips_the_ladder(
    tmp_path: Path, spec_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_ladder(package_dir: Path, progress=None) -> ValidationReport:
        raise AssertionError("the ladder ran with --no-test")

    monkeypatch.setattr(mcgen.export, "run_quick_ladder", no_ladder)
    result = run("export", spec_file, "--out", tmp_path / "out", "--no-test")
    assert result.exit_code == 0, result.output
    assert "not tested" in result.stdout
    assert manifest(tmp_path / "out")["export"]["tested_with"] is None


def test_a_bad_spec_is_refused_with_nothing_written(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(tiny().replace("heads: 2", "heads: two"))
    result = run("export", tmp_path / "bad.yaml", "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "memory.heads" in result.stderr
    assert sorted(tree(tmp_path)) == ["bad.yaml"]


# --- validate --exported ------------------------------------------------------------------


@pytest.mark.slow
def test_validate_exported_passes_on_a_fresh_export(export_copy: Path) -> None:
    before = tree(export_copy)
    result = run("validate", "--exported", export_copy)
    assert result.exit_code == 0, result.output
    assert "no file edited since export" in result.stdout
    assert re.search(r"\b\d+ passed\b", result.stdout), result.stdout
    assert tree(export_copy) == before  # no caches or bytecode left behind


@pytest.mark.slow
def test_validate_exported_with_its_spec_as_json(export_copy: Path, spec_file: Path) -> None:
    result = run("validate", spec_file, "--exported", export_copy, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["drift"] == []
    assert document["tests"]["passed"] is True
    assert re.search(r"\b\d+ passed\b", document["tests"]["summary"])


@pytest.mark.parametrize(
    ("relative", "says"),
    [
        ("tiny_grm/ops.py", "edited since it was generated"),
        ("tests/test_tiny_grm.py", "edited since it was exported"),
        ("pyproject.toml", "edited since it was exported"),
        ("README.md", "edited since it was exported"),
    ],
)
def test_validate_exported_names_an_edited_file(
    export_copy: Path, relative: str, says: str
) -> None:
    path = export_copy / relative
    path.write_text(path.read_text() + "\n# edited\n")
    result = run("validate", "--exported", export_copy)
    assert result.exit_code == 2
    assert f"{path}: {says}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # only that file
    assert "passed" not in result.stdout  # the tests did not run


def test_validate_exported_names_a_missing_file(export_copy: Path) -> None:
    (export_copy / "tests" / "test_tiny_grm.py").unlink()
    (export_copy / "tiny_grm" / "layer.py").unlink()
    result = run("validate", "--exported", export_copy)
    assert result.exit_code == 2
    assert "test_tiny_grm.py: missing" in result.stderr
    assert "layer.py: missing" in result.stderr


def test_validate_exported_against_another_version_of_the_spec(
    export_copy: Path, tmp_path: Path
) -> None:
    (tmp_path / "tiny_grm.yaml").write_text(tiny(d_model=32))
    result = run("validate", tmp_path / "tiny_grm.yaml", "--exported", export_copy)
    assert result.exit_code == 2
    assert "another version of spec `tiny_grm`" in result.stderr


@pytest.mark.slow
def test_validate_exported_fails_when_the_exported_tests_fail(export_copy: Path) -> None:
    # A consistent export (hashes updated) whose tests fail: exit 1 with pytest's summary.
    test_path = export_copy / "tests" / "test_tiny_grm.py"
    test_path.write_text(test_path.read_text() + "\n\ndef test_broken():\n    assert False\n")
    document = manifest(export_copy)
    document["export"]["files"]["tests/test_tiny_grm.py"] = sha256(test_path)
    (export_copy / "tiny_grm" / MANIFEST).write_text(json.dumps(document))
    result = run("validate", "--exported", export_copy)
    assert result.exit_code == 1
    assert re.search(r"\b1 failed\b", result.stdout), result.stdout
    assert "test_broken" in result.stdout


@pytest.mark.parametrize(
    "planted",
    ["tests/conftest.py", "numpy.py", "tiny_grm/evil.pyc", "conftest.py", "tiny_grm/torch.py"],
)
def test_validate_exported_names_an_unknown_file_and_runs_nothing(
    export_copy: Path, planted: str
) -> None:
    marker = export_copy.parent / "planted_code_ran"
    path = export_copy / planted
    path.write_text(f"open({str(marker)!r}, 'w').close()\n")
    result = run("validate", "--exported", export_copy)
    assert result.exit_code == 2, result.output
    assert f"{path}: unknown file, not written by mcgen" in result.stderr
    assert "passed" not in result.stdout  # the tests did not run
    assert not marker.exists()


def test_validate_exported_names_an_unknown_folder(export_copy: Path) -> None:
    (export_copy / "sympy").mkdir()
    result = run("validate", "--exported", export_copy)
    assert result.exit_code == 2, result.output
    assert f"{export_copy / 'sympy'}/: unknown folder" in result.stderr


@pytest.mark.slow
def test_validate_exported_never_runs_bytecode_beside_the_export(export_copy: Path) -> None:
    marker = export_copy.parent / "planted_bytecode_ran"
    source = export_copy / "tiny_grm" / "__init__.py"
    planted = compile(
        f"open({str(marker)!r}, 'w').close()\n" + source.read_text(), str(source), "exec"
    )
    stat = source.stat()
    data = importlib._bootstrap_external._code_to_timestamp_pyc(  # type: ignore[attr-defined]
        planted, int(stat.st_mtime), stat.st_size
    )
    cached = Path(importlib.util.cache_from_source(str(source)))
    cached.parent.mkdir(exist_ok=True)
    cached.write_bytes(data)
    result = run("validate", "--exported", export_copy)
    assert result.exit_code == 0, result.output
    assert not marker.exists()
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # nothing written


def test_validate_exported_reports_a_corrupt_manifest(export_copy: Path) -> None:
    (export_copy / "tiny_grm" / MANIFEST).write_text('{"name": ')
    result = run("validate", "--exported", export_copy)
    assert result.exit_code == 2, result.output
    assert f"{export_copy / 'tiny_grm' / MANIFEST}: not valid JSON" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("where", ["a_file", "a_file/below"])
def test_export_to_a_bad_out_is_a_clear_error(tmp_path: Path, spec_file: Path, where: str) -> None:
    (tmp_path / "a_file").write_text("x")
    result = run("export", spec_file, "--out", tmp_path / where, "--no-test")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert f"{tmp_path / where}: " in result.stderr
    assert (tmp_path / "a_file").read_text() == "x"


def test_a_re_export_leaves_nothing_beside_the_folder(export_copy: Path, spec_file: Path) -> None:
    beside = sorted(p.name for p in export_copy.parent.iterdir())
    result = run("export", spec_file, "--out", export_copy, "--no-test")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in export_copy.parent.iterdir()) == beside


def test_validate_needs_a_spec_or_an_export() -> None:
    result = run("validate")
    assert result.exit_code == 2
    assert "--exported" in result.stderr


def test_validate_exported_refuses_a_folder_that_is_no_export(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\n")
    result = run("validate", "--exported", tmp_path)
    assert result.exit_code == 2
    assert "mcgen export" in result.stderr
    result = run("validate", "--exported", tmp_path / "nothing")
    assert result.exit_code == 2
    assert "no such folder" in result.stderr


# --- the wheel, in a fresh virtual environment --------------------------------------------


def venv_run(args: list[str], *, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in subprocess_env().items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    }
    env["PYTHONNOUSERSITE"] = "1"
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.slow
def test_the_wheel_installs_and_passes_its_tests_without_mcgen(
    exported: Path, tmp_path: Path
) -> None:
    wheels = tmp_path / "wheels"
    built = venv_run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", str(exported), "-w", str(wheels)],
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = wheels.glob("*.whl")
    assert wheel.name.startswith(f"tiny_grm-{__version__}+")
    with zipfile.ZipFile(wheel) as archive:
        packaged = {n for n in archive.namelist() if not n.split("/")[0].endswith(".dist-info")}
    assert packaged == {f"tiny_grm/{f}" for f in (*PACKAGE_FILES, MANIFEST)}

    venv = tmp_path / "venv"
    made = venv_run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    python = str(venv / ("Scripts" if os.name == "nt" else "bin") / "python")
    pip = [python, "-m", "pip", "install", "--no-input"]
    got_torch = venv_run([*pip, "torch==2.13.0"], cwd=tmp_path)
    if got_torch.returncode != 0:
        pytest.skip(f"pip install torch==2.13.0 failed in a fresh venv: {got_torch.stderr[-500:]}")
    installed = venv_run([*pip, str(wheel), "pytest"], cwd=tmp_path)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    no_mcgen = venv_run([python, "-c", "import mcgen"], cwd=tmp_path)
    assert no_mcgen.returncode != 0
    assert "No module named 'mcgen'" in no_mcgen.stderr
    where = venv_run(
        [python, "-c", "import tiny_grm; print(tiny_grm.__file__); print(tiny_grm.SPEC['name'])"],
        cwd=tmp_path,
    )
    assert where.returncode == 0, where.stderr
    location, spec_name = where.stdout.split()
    assert Path(location).is_relative_to(venv)
    assert spec_name == "tiny_grm"

    # The exported tests, away from the project folder: they test the installed package.
    run_dir = tmp_path / "run"
    shutil.copytree(exported / "tests", run_dir / "tests")
    tests = venv_run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=run_dir)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert re.search(r"\b\d+ passed\b", tests.stdout), tests.stdout


DEEP = """\
name: tiny_titans
memory: {recurrence: titans, heads: 2, key_dim: 8, value_dim: 8, deep: {minibatch: 4}}
cache:
  segments: {kind: constant, length: 8}
aggregation: {kind: soup}
layer: {d_model: 16}
"""


@pytest.mark.slow
def test_a_deep_memory_exports_with_working_tests_and_readme(tmp_path: Path) -> None:
    spec = tmp_path / "tiny_titans.yaml"
    spec.write_text(DEEP)
    export_dir = tmp_path / "export"
    export_spec(spec, export_dir)
    tests = run_exported_pytest(export_dir)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    readme = (export_dir / "README.md").read_text()
    assert "weights" in readme and "MCStateCache" in readme  # the HF-style call, deep too
    [example] = re.findall(r"```python\n(.*?)```", readme, re.S)
    done = subprocess.run(
        [sys.executable, "-c", example],
        cwd=export_dir,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
