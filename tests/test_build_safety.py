"""`mcgen build` on disk (issue 12, items 9, 10 and 15): it replaces only a package that
mcgen built, never leaves the name empty, takes turns with other builds of the same folder,
writes normal permissions and a header python can read; a package is checked for unknown
files, and imported without trusting bytecode beside it or putting its folder on the path."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from spec_helpers import spec_text
from typer.testing import CliRunner, Result

from mcgen.build import build
from mcgen.cli import app
from mcgen.codegen.package import MANIFEST, RenderedPackage
from mcgen.packages import PackageError, drift, import_package, read_manifest

# PEP 263: a comment on line 1 or 2 matching this sets the file's encoding.
CODING = re.compile(rb"^[ \t\f]*#.*?coding[:=][ \t]*([-_.a-zA-Z0-9]+)")


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(spec_text(name="tiny"))
    return path


def package(name: str, **files: str) -> RenderedPackage:
    """A package with a manifest, as render_package writes one (file hashes are not checked
    when a package is replaced)."""
    manifest = {"name": name, "spec_hash": "0" * 64, "files": dict.fromkeys(files, "0" * 64)}
    return RenderedPackage(name, {**files, MANIFEST: json.dumps(manifest)})


def umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --- item 9: only a package mcgen built is replaced ----------------------------------------


def test_a_users_folder_is_not_replaced(tmp_path: Path, spec_file: Path) -> None:
    out = tmp_path / "out"
    (out / "tiny").mkdir(parents=True)
    (out / "tiny" / "thesis.tex").write_text("years of work")
    result = run("build", spec_file, "--out", out)
    assert result.exit_code == 2, result.output
    assert "not a package mcgen built" in result.stderr
    assert "Traceback" not in result.output
    assert (out / "tiny" / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in out.iterdir()) == ["tiny"]


def test_a_users_file_is_not_replaced(tmp_path: Path, spec_file: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "tiny").write_text("notes")
    result = run("build", spec_file, "--out", out)
    assert result.exit_code == 2, result.output
    assert "not a folder" in result.stderr
    assert (out / "tiny").read_text() == "notes"


def test_a_link_is_not_followed_or_replaced(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    package("pkg", **{"a.py": "x = 1\n"}).write(elsewhere)
    out.mkdir()
    (out / "pkg").symlink_to(elsewhere / "pkg")
    with pytest.raises(PackageError, match="is a link"):
        package("pkg", **{"b.py": "y = 2\n"}).write(out)
    assert (out / "pkg").is_symlink()
    assert (elsewhere / "pkg" / "a.py").is_file()


def test_a_package_of_another_name_is_not_replaced(tmp_path: Path) -> None:
    package("other", **{"a.py": "x = 1\n"}).write(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "other").rename(tmp_path / "pkg")
    with pytest.raises(PackageError, match="package `other`"):
        package("pkg", **{"b.py": "y = 2\n"}).write(tmp_path)
    assert (tmp_path / "pkg" / "a.py").is_file()


def test_files_added_to_a_package_are_not_deleted(tmp_path: Path) -> None:
    target = package("pkg", **{"a.py": "x = 1\n"}).write(tmp_path)
    (target / "my_notes.py").write_text("keep me")
    with pytest.raises(PackageError, match="my_notes.py"):
        package("pkg", **{"a.py": "x = 2\n"}).write(tmp_path)
    assert (target / "my_notes.py").read_text() == "keep me"
    assert (target / "a.py").read_text() == "x = 1\n"


def test_a_package_and_its_bytecode_are_replaced(tmp_path: Path) -> None:
    target = package("pkg", **{"a.py": "x = 1\n", "b.py": "y = 1\n"}).write(tmp_path)
    (target / "__pycache__").mkdir()
    (target / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    package("pkg", **{"a.py": "x = 2\n"}).write(tmp_path)
    assert sorted(p.name for p in target.iterdir()) == ["a.py", MANIFEST]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


def test_a_corrupt_manifest_in_the_way_is_refused_clearly(tmp_path: Path) -> None:
    target = package("pkg", **{"a.py": "x = 1\n"}).write(tmp_path)
    (target / MANIFEST).write_text("{not json")
    with pytest.raises(PackageError, match="manifest.json: not valid JSON"):
        package("pkg", **{"a.py": "x = 2\n"}).write(tmp_path)
    assert (target / "a.py").read_text() == "x = 1\n"


# --- item 15: bad --out, swaps, turns, modes, headers --------------------------------------


@pytest.mark.parametrize("where", ["a_file", "a_file/below"])
def test_a_bad_out_is_a_clear_error(tmp_path: Path, spec_file: Path, where: str) -> None:
    (tmp_path / "a_file").write_text("x")
    result = run("build", spec_file, "--out", tmp_path / where)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert f"{tmp_path / where}: " in result.stderr
    assert "choose another --out" in result.stderr


def test_a_built_folder_has_the_modes_of_the_umask(tmp_path: Path, spec_file: Path) -> None:
    target = build(spec_file, tmp_path / "out").path
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask()
    assert stat.S_IMODE((target / "layer.py").stat().st_mode) == 0o666 & ~umask()


KILLED_BUILD = """
import os, sys
from pathlib import Path
import mcgen.packages as packages
from mcgen.codegen.package import RenderedPackage

out, step, swap = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "swap"
if not swap:
    packages._exchange = lambda a, b: False  # as on a system without renameat2
real_replace = os.replace

def killed_after(*args):  # os.replace, then kill -9 at the chosen step
    real_replace(*args)
    if Path(args[0]).name == step or Path(args[1]).name == step:
        os._exit(9)

os.replace = killed_after
real_exchange = packages._exchange
def exchange_then_die(a, b):
    done = real_exchange(a, b)
    os._exit(9)
if swap:
    packages._exchange = exchange_then_die
manifest = '{"name": "pkg", "spec_hash": "", "files": {"a.py": ""}}'
RenderedPackage("pkg", {"a.py": "x = 2\\n", "manifest.json": manifest}).write(out)
"""


def kill_during_a_rebuild(tmp_path: Path, swap: bool) -> Path:
    out = tmp_path / "out"
    package("pkg", **{"a.py": "x = 1\n"}).write(out)
    script = tmp_path / "killed_build.py"
    script.write_text(KILLED_BUILD)
    step = "pkg"  # the first rename moves the old package aside (as pkg)
    done = subprocess.run(
        [sys.executable, str(script), str(out), step, "swap" if swap else "two-renames"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 9, done.stderr
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_a_build_killed_mid_swap_leaves_a_whole_package(tmp_path: Path) -> None:
    out = kill_during_a_rebuild(tmp_path, swap=True)
    assert (out / "pkg" / "a.py").read_text() == "x = 2\n"  # the new one, whole
    package("pkg", **{"a.py": "x = 3\n"}).write(out)  # the next build clears what was left
    assert sorted(p.name for p in out.iterdir()) == ["pkg"]


def test_a_build_killed_between_two_renames_is_recovered_by_the_next(tmp_path: Path) -> None:
    out = kill_during_a_rebuild(tmp_path, swap=False)
    # Where renameat2 is missing the name was empty for an instant, and the kill came then:
    # the old package waits aside, whole, and the next build puts it back before replacing it.
    assert not (out / "pkg").exists()
    aside = [path.read_text() for path in out.glob(".*/pkg/a.py")]
    assert aside == ["x = 1\n"]
    package("pkg", **{"a.py": "x = 3\n"}).write(out)
    assert sorted(p.name for p in out.iterdir()) == ["pkg"]
    assert (out / "pkg" / "a.py").read_text() == "x = 3\n"


CONCURRENT_BUILDS = """
import sys
from pathlib import Path
from mcgen.codegen.package import RenderedPackage
out, me = Path(sys.argv[1]), sys.argv[2]
manifest = '{"name": "pkg", "spec_hash": "", "files": {"a.py": ""}}'
for i in range(25):
    RenderedPackage("pkg", {"a.py": f"x = {me}\\n", "manifest.json": manifest}).write(out)
"""


def test_concurrent_builds_of_one_folder_take_turns(tmp_path: Path) -> None:
    script = tmp_path / "builds.py"
    script.write_text(CONCURRENT_BUILDS)
    out = tmp_path / "out"
    runs = [
        subprocess.Popen(
            [sys.executable, str(script), str(out), str(me)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for me in range(3)
    ]
    outputs = [(p.wait(), p.stdout.read()) for p in runs]
    for code, output in outputs:
        assert code == 0, output
    assert sorted(p.name for p in out.iterdir()) == ["pkg"]
    assert sorted(p.name for p in (out / "pkg").iterdir()) == ["a.py", MANIFEST]


def test_a_spec_path_that_names_an_encoding_leaves_the_package_importable(tmp_path: Path) -> None:
    folder = tmp_path / "coding=utf-7" / "x\x1by"
    folder.mkdir(parents=True)
    (folder / "tiny.yaml").write_text(spec_text(name="tiny"))
    target = build(folder / "tiny.yaml", tmp_path / "out").path
    for path in target.glob("*.py"):
        head = path.read_bytes().splitlines()[:2]
        assert not any(CODING.match(line) for line in head), (path, head)
        assert b"\x1b" not in path.read_bytes()
    assert import_package(target).MCLayer is not None


# --- item 10: unknown files, bytecode, shadowing -------------------------------------------


@pytest.fixture
def built(tmp_path: Path, spec_file: Path) -> Path:
    return build(spec_file, tmp_path / "out").path


@pytest.mark.parametrize(
    "planted", ["numpy.py", "evil.pyc", "torch/__init__.py", "conftest.py", "sub/"]
)
def test_an_unknown_file_in_a_package_is_reported(built: Path, planted: str) -> None:
    path = built / planted
    if planted.endswith("/"):
        path.mkdir()
    else:
        path.parent.mkdir(exist_ok=True)
        path.write_text("raise SystemExit('planted code ran')\n")
    problems = drift(built)
    first = planted.split("/")[0]
    assert any(p.startswith(str(built / first)) and "not written by mcgen" in p for p in problems)


def test_validate_refuses_a_package_with_an_unknown_file(built: Path, spec_file: Path) -> None:
    (built / "numpy.py").write_text("raise SystemExit('planted code ran')\n")
    result = run("validate", spec_file, "--package", built, "--quick")
    assert result.exit_code == 2, result.output
    assert f"{built / 'numpy.py'}: unknown file" in result.stderr


def test_bytecode_beside_a_package_is_never_run(built: Path) -> None:
    # A .pyc that claims to be layer.py's (same mtime and size in its header).
    source = built / "layer.py"
    planted = compile(
        "PLANTED = True\nraise SystemExit('planted bytecode ran')\n", str(source), "exec"
    )
    data = importlib._bootstrap_external._code_to_timestamp_pyc(  # type: ignore[attr-defined]
        planted, int(source.stat().st_mtime), source.stat().st_size
    )
    cached = Path(importlib.util.cache_from_source(str(source)))
    cached.parent.mkdir(exist_ok=True)
    cached.write_bytes(data)
    assert drift(built) == []  # caches are ignored, not reported: they are never read
    module = import_package(built)
    assert not hasattr(sys.modules[module.__name__ + ".layer"], "PLANTED")
    assert sorted(p.name for p in cached.parent.iterdir()) == [cached.name]  # none written


def test_the_package_folder_is_not_put_on_the_path(built: Path) -> None:
    import_package(built)
    assert str(built) not in sys.path
    assert all(Path(p or ".").resolve() != built.resolve() for p in sys.path)


def test_a_corrupt_manifest_is_a_clear_error(built: Path, spec_file: Path) -> None:
    (built / MANIFEST).write_text('{"name": "tiny", "files": [1, 2]}')
    with pytest.raises(PackageError, match="manifest.json: "):
        read_manifest(built)
    (built / MANIFEST).write_bytes(b"\xff\xfe")
    result = run("validate", spec_file, "--package", built)
    assert result.exit_code == 2, result.output
    assert f"{built / MANIFEST}: " in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("listed", ["../outside.py", "/etc/passwd", "sub/../../x.py"])
def test_a_manifest_naming_files_outside_its_package_is_refused(built: Path, listed: str) -> None:
    document = json.loads((built / MANIFEST).read_text())
    document["files"][listed] = "0" * 64
    (built / MANIFEST).write_text(json.dumps(document))
    with pytest.raises(PackageError, match="outside"):
        read_manifest(built)


def test_script_of_this_file_is_consistent() -> None:
    # The scripts above run in subprocesses; they must at least compile.
    for script in (KILLED_BUILD, CONCURRENT_BUILDS):
        compile(textwrap.dedent(script), "<script>", "exec")


def test_terminal_escapes_in_a_path_are_shown_escaped(tmp_path: Path, spec_file: Path) -> None:
    out = tmp_path / "out\x1b[2J"
    (out / "tiny").mkdir(parents=True)
    result = run("build", spec_file, "--out", out)
    assert result.exit_code == 2, result.output
    assert "\x1b" not in result.stderr
    assert "out\\x1b[2J" in result.stderr


def test_a_refused_target_writes_none_of_the_specs(tmp_path: Path, spec_file: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(spec_text(name="other"))
    out = tmp_path / "out"
    (out / "other").mkdir(parents=True)
    result = run("build", spec_file, other, "--out", out)
    assert result.exit_code == 2, result.output
    assert "not a package mcgen built" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["other"]  # tiny was not built either
