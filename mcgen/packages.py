"""Generated packages on disk: write one safely, check it against its manifest, import it.

Writing replaces only a package that mcgen built (its manifest names it), takes turns with
other builds of the same folder, and never leaves the package's name empty. Checking
reports edited, missing and unknown files. Importing compiles the package's own sources:
bytecode beside them is never read, and its folder is never put on sys.path.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path, PurePosixPath
from types import CodeType, ModuleType

from mcgen.spec import Spec, spec_hash
from mcgen.spec.problems import printable_lines

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]

MANIFEST = "manifest.json"
# Folders never read when a package is imported or tested (bytecode is compiled afresh).
CACHE_FOLDERS = frozenset({"__pycache__"})
# Beside a package while a build runs; left over only by a killed build (cleared by the next).
STAGING_PREFIX = ".mcgen-new-"
BACKUP_PREFIX = ".mcgen-old-"


class PackageError(Exception):
    """A package or export that cannot be used or written; the message names the path."""

    def __str__(self) -> str:
        # Paths can hold anything, terminal escapes included: show them escaped.
        return printable_lines(super().__str__())


# --- the manifest ----------------------------------------------------------------------------


def read_manifest(package_dir: Path, advice: str = "rebuild the package") -> dict:
    """The package's manifest, checked to be one mcgen wrote (PackageError, ending with
    `advice`, otherwise)."""
    path = package_dir / MANIFEST
    if not path.is_file():
        raise PackageError(
            f"{package_dir}: no {MANIFEST}; is this a package written by `mcgen build`?"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise PackageError(f"{path}: not valid JSON ({exc.msg}, {where}); {advice}") from None
    except (OSError, UnicodeDecodeError, RecursionError) as exc:
        raise PackageError(f"{path}: cannot be read ({exc}); {advice}") from None
    problem = manifest_problem(manifest)
    if problem is not None:
        raise PackageError(f"{path}: {problem}; {advice}")
    return manifest


def manifest_problem(manifest: object) -> str | None:
    """What makes `manifest` not one that mcgen wrote, or None."""
    if not isinstance(manifest, dict):
        return "not a JSON object"
    for key in ("name", "spec_hash"):
        if not isinstance(manifest.get(key), str):
            return f"`{key}` is not a string"
    sections = {"files": manifest.get("files")}
    if "export" in manifest:
        export = manifest["export"]
        sections["export.files"] = export.get("files") if isinstance(export, dict) else None
    for key, files in sections.items():
        if not isinstance(files, dict) or not all(
            isinstance(name, str) and isinstance(digest, str) for name, digest in files.items()
        ):
            return f"`{key}` is not a mapping of file names to hashes"
        outside = [name for name in files if not _inside(name)]
        if outside:
            return f"`{key}` names a file outside the package: {outside[0][:80]!r}"
    return None


def _inside(relative: str) -> bool:
    """Whether a manifest's file name stays inside its folder (relative, no `..`)."""
    path = PurePosixPath(relative)
    return (
        bool(relative)
        and not path.is_absolute()
        and ".." not in path.parts
        and ("\\" not in relative and ":" not in relative)
    )


# --- checking ---------------------------------------------------------------------------------


def drift(package_dir: Path, spec: Spec | None = None) -> list[str]:
    """What differs from the manifest (edited, missing or unknown files) and, given one,
    from the spec."""
    manifest = read_manifest(package_dir)
    problems = []
    if spec is not None and manifest["spec_hash"] != spec_hash(spec):
        problems.append(
            f"{package_dir}: built from another version of spec `{spec.name}` "
            f"(manifest {manifest['spec_hash'][:12]}, spec {spec_hash(spec)[:12]}): rebuild it"
        )
    problems += changed_files(package_dir, manifest["files"], since="it was generated")
    return problems + unknown_files(package_dir, [*manifest["files"], MANIFEST])


def changed_files(root: Path, hashes: dict[str, str], *, since: str) -> list[str]:
    """Each file under root (relative path -> sha256) that is missing or no longer matches."""
    problems = []
    for relative, digest in sorted(hashes.items()):
        path = root / relative
        if path.is_symlink():
            problems.append(f"{path}: a link, not the file mcgen wrote")
        elif not path.is_file():
            problems.append(f"{path}: missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            problems.append(f"{path}: edited since {since}")
    return problems


def unknown_files(
    root: Path, expected: Iterable[str], ignored: frozenset[str] = CACHE_FOLDERS
) -> list[str]:
    """Each file or folder under root that is not one of `expected` (relative posix paths)
    or inside one: anything planted there could be imported. Folders named in `ignored`
    (caches that are never read) are skipped."""
    files = set(expected)
    folders = {str(parent) for name in files for parent in PurePosixPath(name).parents}
    problems: list[str] = []

    def visit(folder: Path, prefix: str) -> None:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            relative = prefix + entry.name
            if entry.is_symlink():
                problems.append(f"{entry.path}: a link, not written by mcgen (remove it)")
            elif entry.is_dir():
                if relative in folders:
                    visit(Path(entry.path), relative + "/")
                elif entry.name not in ignored:
                    problems.append(f"{entry.path}/: unknown folder, not written by mcgen")
            elif relative not in files:
                problems.append(f"{entry.path}: unknown file, not written by mcgen (remove it)")

    visit(root, "")
    return problems


# --- writing ----------------------------------------------------------------------------------


def write_package(out_dir: Path, name: str, files: dict[str, str]) -> Path:
    """Write out_dir/name/ with `files` (name -> text), replacing only a package mcgen built.

    The package is written whole beside its place, then swapped in: the name always holds
    a whole package, the old one or the new one. Builds into one folder take turns.
    """
    _make_folder(out_dir)
    target = out_dir / name
    with _turn(out_dir):
        try:
            _recover(out_dir, name)
            check_replaceable(target, name)
            _write_and_swap(target, files)
        except OSError as exc:
            raise PackageError(f"{target}: could not write the package ({exc})") from exc
    return target


def _write_and_swap(target: Path, files: dict[str, str]) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{target.name}-", dir=target.parent))
    try:
        staging.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 would stay
        for file_name, text in files.items():
            (staging / file_name).write_text(text, encoding="utf-8", newline="\n")
        put_in_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # holds the old package, if any


def check_replaceable(target: Path, name: str) -> None:
    """Nothing, or nothing but a package that mcgen built as `name`; PackageError otherwise.

    Files added to such a package would be lost with it: they are refused too (bytecode
    caches aside, which are rebuilt)."""
    hint = "move it away or choose another --out"
    if target.is_symlink():
        raise PackageError(f"{target}: is a link, not a package mcgen built; {hint}")
    if not target.exists():
        return
    if not target.is_dir():
        raise PackageError(f"{target}: exists and is not a folder; {hint}")
    if not (target / MANIFEST).is_file():
        raise PackageError(f"{target}: not a package mcgen built (no {MANIFEST}); {hint}")
    manifest = read_manifest(target, advice=f"it is not replaced: {hint}")
    if manifest["name"] != name:
        raise PackageError(
            f"{target}: holds the package `{manifest['name']}`, not `{name}`; {hint}"
        )
    if "export" in manifest:
        raise PackageError(
            f"{target}: is the package of an export; export it again with `mcgen export`, "
            "or choose another --out"
        )
    added = unknown_files(target, [*manifest["files"], MANIFEST])
    if added:
        raise PackageError(
            f"{target}: holds files mcgen did not write, which a rebuild would delete "
            f"({'; '.join(added)}); move them away first"
        )


def _make_folder(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PackageError(
            f"{out_dir}: cannot hold packages ({exc.strerror or exc}); choose another --out"
        ) from None


@contextmanager
def _turn(out_dir: Path) -> Iterator[None]:
    """Hold the folder for one build: an exclusive flock on the folder itself, so no lock
    file is left behind (the lock goes with the process, even killed)."""
    if fcntl is None:  # no flock: builds into one folder must not overlap
        yield
        return
    try:
        handle = os.open(out_dir, os.O_RDONLY)
    except OSError as exc:
        raise PackageError(
            f"{out_dir}: cannot hold packages ({exc.strerror or exc}); choose another --out"
        ) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def _recover(out_dir: Path, name: str) -> None:
    """Clear what a killed build of `name` left: its staging folder, and a backup that
    `put_in_place` moved aside, which goes back where it was if the name is empty."""
    for leftover in sorted(out_dir.glob(f"{BACKUP_PREFIX}{name}-*")):
        old = leftover / name
        if old.is_dir() and not os.path.lexists(out_dir / name):
            os.replace(old, out_dir / name)
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in out_dir.glob(f"{STAGING_PREFIX}{name}-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def put_in_place(staging: Path, target: Path) -> None:
    """Move the finished package to target, never leaving target empty.

    Linux swaps the two folders in one step (renameat2 RENAME_EXCHANGE); staging then holds
    the old package, which the caller deletes. Elsewhere the old package moves aside and
    the new one in, two renames: a build killed between them leaves the old package in a
    BACKUP_PREFIX folder, which the next build puts back (`_recover`).
    """
    if not os.path.lexists(target):
        os.replace(staging, target)
    elif not _exchange(staging, target):
        backup = Path(tempfile.mkdtemp(prefix=f"{BACKUP_PREFIX}{target.name}-", dir=target.parent))
        os.replace(target, backup / target.name)
        try:
            os.replace(staging, target)
        except BaseException:
            os.replace(backup / target.name, target)
            raise
        shutil.rmtree(backup, ignore_errors=True)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically; False where the system or file system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    status = renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if status == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


@cache
def _renameat2():  # noqa: ANN202 (a ctypes function)
    """libc's renameat2 (Linux, glibc >= 2.28), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    function.argtypes += [ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --- importing --------------------------------------------------------------------------------


class SourceOnlyLoader(importlib.machinery.SourceFileLoader):
    """Compiles the .py file itself on every import: bytecode beside it (__pycache__) is
    never read, so a planted .pyc cannot stand in for the source; none is written either."""

    def get_code(self, fullname: str) -> CodeType:
        path = self.get_filename(fullname)
        return self.source_to_code(self.get_data(path), path)


def import_package(package_dir: Path) -> ModuleType:
    """Import a generated package from its directory under a private, unique module name.

    Generated modules import each other relatively, so any top-level name works; a
    unique one lets several builds of the same spec live in one process (tests). The
    package is imported as a package: its folder is its __path__, never on sys.path, so
    nothing in it can stand in for another module; only its .py files are importable.
    """
    package_dir = package_dir.resolve()
    digest = hashlib.sha256(str(package_dir).encode()).hexdigest()[:10]
    # The manifest hashes every file: a rebuilt package gets a fresh module.
    files = json.dumps(read_manifest(package_dir)["files"], sort_keys=True).encode()
    name = f"_mcgen_{package_dir.name}_{digest}_{hashlib.sha256(files).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    # Submodules are found through the path's finder: one that knows only .py sources.
    sys.path_importer_cache[str(package_dir)] = importlib.machinery.FileFinder(
        str(package_dir), (SourceOnlyLoader, importlib.machinery.SOURCE_SUFFIXES)
    )
    init = package_dir / "__init__.py"
    module_spec = importlib.util.spec_from_file_location(
        name,
        init,
        loader=SourceOnlyLoader(name, str(init)),
        submodule_search_locations=[str(package_dir)],
    )
    if module_spec is None or module_spec.loader is None:
        raise PackageError(f"{package_dir}: not an importable package")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    return module
