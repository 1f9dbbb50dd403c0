"""Generated packages on disk: import one by path, and check it against its manifest."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

from mcgen.codegen.package import MANIFEST
from mcgen.spec import Spec, spec_hash


class PackageError(Exception):
    pass


def read_manifest(package_dir: Path) -> dict:
    path = package_dir / MANIFEST
    if not path.is_file():
        raise PackageError(
            f"{package_dir}: no {MANIFEST}; is this a package written by `mcgen build`?"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def drift(package_dir: Path, spec: Spec | None = None) -> list[str]:
    """What differs from the manifest (edited or missing files) and, given one, from the spec."""
    manifest = read_manifest(package_dir)
    problems = []
    if spec is not None and manifest["spec_hash"] != spec_hash(spec):
        problems.append(
            f"{package_dir}: built from another version of spec `{spec.name}` "
            f"(manifest {manifest['spec_hash'][:12]}, spec {spec_hash(spec)[:12]}): rebuild it"
        )
    return problems + changed_files(package_dir, manifest["files"], since="it was generated")


def changed_files(root: Path, hashes: dict[str, str], *, since: str) -> list[str]:
    """Each file under root (relative path -> sha256) that is missing or no longer matches."""
    problems = []
    for relative, digest in sorted(hashes.items()):
        path = root / relative
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            problems.append(f"{path}: edited since {since}")
    return problems


def import_package(package_dir: Path) -> ModuleType:
    """Import a generated package from its directory under a private, unique module name.

    Generated modules import each other relatively, so any top-level name works; a
    unique one lets several builds of the same spec live in one process (tests).
    """
    package_dir = package_dir.resolve()
    digest = hashlib.sha256(str(package_dir).encode()).hexdigest()[:10]
    # The manifest hashes every file: a rebuilt package gets a fresh module.
    files = json.dumps(read_manifest(package_dir)["files"], sort_keys=True).encode()
    name = f"_mcgen_{package_dir.name}_{digest}_{hashlib.sha256(files).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(
        name, package_dir / "__init__.py", submodule_search_locations=[str(package_dir)]
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
