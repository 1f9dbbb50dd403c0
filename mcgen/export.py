"""`mcgen export`: a spec's package as a standalone, pip-installable project.

    DIR/
      pyproject.toml       hatchling; torch and numpy, triton as an extra; pytest settings
      README.md            install, use, test, and where the package came from
      NAME/                the generated package; its manifest.json gains an "export" section
      tests/test_NAME.py   pytest tests that use the package alone
    and with model=True (`--model`), a Hugging Face model family for the spec:
      NAME/hf.py           <Name>Config, <Name>Model, <Name>ForCausalLM, <Name>Cache, registered
                           with the Auto classes; needs transformers, the project's [hf] extra
      tests/test_NAME_hf.py  training, generate() against recomputing, save/load, bf16 decode

Nothing in DIR imports mcgen. Every file is rendered in memory, written to a staging
folder beside DIR, checked there (the package's quick float32 ladder, unless asked not
to) and only then moved into place, so a failed export leaves DIR as it was.
`export_drift` and `run_exported_tests` are what `mcgen validate --exported` runs.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mcgen import __version__
from mcgen.codegen.package import (
    MANIFEST,
    REQUIRES,
    has_triton,
    header_command,
    plan_inputs,
    render_package,
)
from mcgen.codegen.templates import environment
from mcgen.codegen.written import WrittenChoices
from mcgen.ir.plan import Plan
from mcgen.packages import (
    CACHE_FOLDERS,
    PackageError,
    changed_files,
    current_umask,
    import_package,
    put_in_place,
    read_manifest,
    unknown_files,
)
from mcgen.passes.pipeline import compile_spec
from mcgen.spec import Spec, load_spec, spec_hash
from mcgen.spec.problems import printable_lines
from mcgen.spec.schema import check_package_name
from mcgen.validate import ValidationReport, ladder_steps, validate_package

# What the export's own check runs: the quick ladder in float32 (seconds, not minutes).
EXPORT_DTYPES = ("float32",)
# Distributions whose versions the manifest records as "tested_with".
TESTED_WITH = ("torch", "triton", "numpy")
EXPORT_SECTION = "export"
# Never read by `validate --exported`: bytecode is compiled afresh, pytest's cache is off.
EXPORT_CACHES = CACHE_FOLDERS | {".pytest_cache"}

# progress(description, total) -> advance(step), called once per ladder step.
Progress = Callable[[str, int], Callable[[str], None]]


class ExportError(Exception):
    """An export refused before anything was written (a bad name, a folder that is not ours)."""

    def __str__(self) -> str:
        return printable_lines(super().__str__())  # paths can hold terminal escapes


class ExportTestFailed(Exception):
    """The rendered package failed its quick ladder: nothing was exported."""

    def __init__(self, message: str, report: ValidationReport | None = None):
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class ExportResult:
    spec: Spec
    plan: Plan
    name: str  # the import package: DIR/NAME/
    path: Path  # DIR
    files: dict[str, str]  # path relative to DIR -> text, NAME/manifest.json included
    manifest: dict
    report: ValidationReport | None  # the quick ladder's, None with test=False
    replaced: bool  # whether DIR held a previous export of NAME

    @property
    def package_dir(self) -> Path:
        return self.path / self.name

    def to_json(self) -> dict:
        checks = None
        if self.report is not None:
            failed = sum(not c.passed for c in self.report.checks)
            checks = {"passed": len(self.report.checks) - failed, "failed": failed}
        return {
            "name": self.name,
            "spec": self.spec.name,
            "spec_hash": self.manifest["spec_hash"],
            "path": str(self.path),
            "package": str(self.package_dir),
            "files": sorted(self.files),
            "command": self.manifest[EXPORT_SECTION]["command"],
            "model": self.manifest[EXPORT_SECTION]["model"],
            "tested_with": self.manifest[EXPORT_SECTION]["tested_with"],
            "checks": checks,
            "replaced": self.replaced,
        }


def export_command(
    spec_path: str | Path, out_dir: str | Path, name: str, *, model: bool = False
) -> str:
    """The command that makes this export again, as its files' headers state it."""
    command = (
        f"mcgen export {Path(spec_path).as_posix()} --out {Path(out_dir).as_posix()} --name {name}"
    )
    return f"{command} --model" if model else command


def check_name(name: str) -> str:
    """NAME if it may name the exported package (the spec schema's rule for `name`)."""
    try:
        return check_package_name(name)
    except ValueError as exc:
        raise ExportError(f"--name {name[:64]!r}: {exc}") from None


def project_version(digest: str) -> str:
    """mcgen's version with the spec hash as the local part: one version per spec."""
    return f"{__version__}+{digest[:12]}"


def project_test_file(name: str) -> str:
    """Where the exported tests of package `name` go, relative to DIR."""
    return f"tests/test_{name}.py"


def model_files(name: str) -> tuple[str, str]:
    """Where `--model` puts the Hugging Face module and its tests, relative to DIR."""
    return f"{name}/hf.py", f"tests/test_{name}_hf.py"


def class_prefix(name: str) -> str:
    """The model classes' prefix: tiny_grm -> TinyGrm (TinyGrmConfig, TinyGrmForCausalLM)."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)


def render_export(
    spec: Spec, plan: Plan, *, name: str, command: str, model: bool = False
) -> dict[str, str]:
    """Every file of the export, path relative to DIR -> text; "tested_with" is still None.
    With `model`, the Hugging Face model family and its tests too."""
    package = render_package(spec, plan, command=command)
    digest = spec_hash(spec)
    written = WrittenChoices.of(spec)
    uses_u = written.uses_u
    context = {
        "spec": spec,
        "plan": plan,
        "name": check_name(name),
        "project_name": name.replace("_", "-"),
        "version": project_version(digest),
        "spec_hash": digest,
        "mcgen_version": __version__,
        "command": one_line(command),
        "requires": REQUIRES,
        "written": written,
        "uses_u": uses_u,
        "uses_g": plan.uses_g,
        "uses_beta": plan.uses_beta,
        # The op's optional inputs this spec reads, in the order of its signature.
        "extras": plan_inputs(plan),
        "has_triton": has_triton(plan),
        "model": model,
        "prefix": class_prefix(name),
        "model_type": f"mc_{name}",
    }
    env = environment()
    project = {
        "pyproject.toml": env.get_template("export/pyproject.toml.jinja").render(context),
        "README.md": env.get_template("export/README.md.jinja").render(context),
        project_test_file(name): env.get_template("export/test_package.py.jinja").render(context),
    }
    if model:
        module, tests = model_files(name)
        project[module] = env.get_template("export/hf.py.jinja").render(context)
        project[tests] = env.get_template("export/test_hf.py.jinja").render(context)
    manifest = json.loads(package.files[MANIFEST])
    manifest[EXPORT_SECTION] = {
        "name": name,
        "mcgen_version": __version__,
        "command": context["command"],
        "model": model,
        "files": {path: _sha256(text.encode()) for path, text in sorted(project.items())},
        "tested_with": None,
    }
    files = {f"{name}/{file_name}": text for file_name, text in package.files.items()}
    files[f"{name}/{MANIFEST}"] = _dump(manifest)
    files.update(project)
    return files


def one_line(command: str) -> str:
    """The command as the files' headers state it (as render_package writes it into the
    package's headers): one line, and nothing that changes how a file is read."""
    return header_command(command)


def tested_environment() -> dict[str, str | None]:
    """The versions of torch, triton and numpy here (None for one not installed)."""
    versions: dict[str, str | None] = {}
    for dist in TESTED_WITH:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    if "torch" in sys.modules:  # the torch that ran the ladder, as it names itself
        versions["torch"] = str(sys.modules["torch"].__version__)
    return versions


def run_quick_ladder(package_dir: Path, progress: Progress | None = None) -> ValidationReport:
    """The package's quick float32 ladder, run on the package as it lies in package_dir.

    No bytecode is written beside it (import_package compiles sources only), and its
    modules leave sys.modules afterwards.
    """
    before = set(sys.modules)
    try:
        package = import_package(package_dir)
        advance = None
        if progress is not None:
            steps = ladder_steps(package, backends=None, dtypes=EXPORT_DTYPES, quick=True)
            advance = progress(f"testing {package_dir.name}", steps)
        return validate_package(package, dtypes=EXPORT_DTYPES, quick=True, progress=advance)
    finally:
        prefix = f"_mcgen_{package_dir.name}_"
        for module in set(sys.modules) - before:
            if module.startswith(prefix):
                del sys.modules[module]


def export_spec(
    spec_path: str | Path,
    out_dir: str | Path,
    name: str | None = None,
    test: bool = True,
    progress: Progress | None = None,
    model: bool = False,
) -> ExportResult:
    """Export the package of the spec at spec_path into out_dir as a standalone project
    (with `model`, a Hugging Face model family for it too: NAME/hf.py and its tests).

    Raises SpecError for a bad spec and ExportError for a bad name or an out_dir that
    holds anything but a previous export of the same name (nothing written then), and
    ExportTestFailed when the quick ladder fails (out_dir left as it was).
    """
    spec_path, out_dir = Path(spec_path), Path(out_dir)
    spec = load_spec(spec_path).spec
    name = check_name(spec.name if name is None else name)
    replaced = _check_target(out_dir, name)
    plan = compile_spec(spec).plan
    command = export_command(spec_path, out_dir, name, model=model)
    files = render_export(spec, plan, name=name, command=command, model=model)

    target = Path(os.path.abspath(out_dir))
    try:
        created = _make_parents(target.parent)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-export-", dir=target.parent))
    except OSError as exc:
        raise ExportError(
            f"{out_dir}: cannot be written ({exc.strerror or exc}); choose another --out"
        ) from None
    try:
        staging.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 would become DIR's mode
        _write_tree(staging, files)
        report = None
        if test:
            report = _ladder(staging / name, progress)
            manifest = json.loads(files[f"{name}/{MANIFEST}"])
            manifest[EXPORT_SECTION]["tested_with"] = tested_environment()
            files[f"{name}/{MANIFEST}"] = _dump(manifest)
            _write_tree(staging, {f"{name}/{MANIFEST}": files[f"{name}/{MANIFEST}"]})
        put_in_place(staging, target)  # DIR holds the old export or the new one, whole
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)  # the previous export, where it was swapped out
    manifest = json.loads(files[f"{name}/{MANIFEST}"])
    return ExportResult(spec, plan, name, out_dir, files, manifest, report, replaced)


def _ladder(package_dir: Path, progress: Progress | None) -> ValidationReport:
    try:
        # Looked up at call time, so tests can stand in a failing ladder.
        report = run_quick_ladder(package_dir, progress)
    except Exception as exc:
        raise ExportTestFailed(
            f"the package `{package_dir.name}` could not run its ladder "
            f"({type(exc).__name__}: {exc}); nothing was exported"
        ) from exc
    if not report.passed:
        failed = [c for c in report.checks if not c.passed]
        raise ExportTestFailed(
            f"the package `{package_dir.name}` failed {len(failed)} of {len(report.checks)} "
            "checks of its quick ladder (float32); nothing was exported",
            report,
        )
    return report


# --- the folder ---------------------------------------------------------------------------


def find_exports(export_dir: Path) -> list[str]:
    """Names of the packages in export_dir that `mcgen export` wrote (a manifest with an
    export section)."""
    names = []
    if export_dir.is_dir():
        for child in sorted(export_dir.iterdir()):
            path = child / MANIFEST
            if not path.is_file():
                continue
            try:
                manifest = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(manifest, dict) and isinstance(manifest.get(EXPORT_SECTION), dict):
                names.append(child.name)
    return names


def _check_target(out_dir: Path, name: str) -> bool:
    """Whether out_dir holds a previous export of `name` (to be replaced); raise when it
    holds anything else. A missing or empty out_dir is fine."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ExportError(f"{out_dir}: exists and is not a folder; choose another --out")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return False
    exports = find_exports(out_dir)
    if name in exports:
        return True
    if exports:
        raise ExportError(
            f"{out_dir}: holds the export of `{', '.join(exports)}`, not of `{name}`; "
            "choose another --out, or remove it first"
        )
    raise ExportError(
        f"{out_dir}: exists, is not empty and is not an export; choose a new or empty folder"
    )


def _make_parents(folder: Path) -> Path | None:
    """Create folder and its missing parents; the topmost one created, to undo it."""
    missing = None
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing = candidate
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _write_tree(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="\n")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dump(manifest: dict) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


# --- mcgen validate --exported --------------------------------------------------------------


def find_export(export_dir: Path) -> str:
    """The name of the one package that `mcgen export` wrote into export_dir."""
    if not export_dir.is_dir():
        raise PackageError(f"{export_dir}: no such folder")
    names = find_exports(export_dir)
    if not names:
        for manifest in sorted(export_dir.glob(f"*/{MANIFEST}")):
            read_manifest(manifest.parent, advice="export it again")  # says what is wrong
        raise PackageError(
            f"{export_dir}: not a project written by `mcgen export` "
            f"(no <name>/{MANIFEST} with an export section)"
        )
    if len(names) > 1:
        raise PackageError(f"{export_dir}: holds several exports ({', '.join(names)})")
    return names[0]


def export_drift(export_dir: Path, spec: Spec | None = None) -> list[str]:
    """Each file of the export edited, missing or unknown since it was exported (package and
    project), and, given a spec, whether the export was made from another version of it."""
    name = find_export(export_dir)
    package_dir = export_dir / name
    manifest = read_manifest(package_dir)
    problems = []
    if spec is not None and manifest["spec_hash"] != spec_hash(spec):
        problems.append(
            f"{export_dir}: exported from another version of spec `{spec.name}` "
            f"(manifest {manifest['spec_hash'][:12]}, spec {spec_hash(spec)[:12]}): export it again"
        )
    package_files = manifest["files"]
    project_files = manifest[EXPORT_SECTION]["files"]
    problems += changed_files(package_dir, package_files, since="it was generated")
    problems += changed_files(export_dir, project_files, since="it was exported")
    expected = [f"{name}/{file_name}" for file_name in (*package_files, MANIFEST)]
    return problems + unknown_files(export_dir, [*expected, *project_files], EXPORT_CACHES)


@dataclass(frozen=True)
class ExportedTests:
    command: list[str]
    returncode: int
    summary: str  # pytest's closing line, e.g. "9 passed in 3.10s"
    output: str

    @property
    def passed(self) -> bool:
        return self.returncode == 0

    def to_json(self) -> dict:
        return {
            "command": self.command,
            "returncode": self.returncode,
            "passed": self.passed,
            "summary": self.summary,
        }


def run_exported_tests(export_dir: Path, timeout: float | None = 1800) -> ExportedTests:
    """`python -B -m pytest -q tests` in a subprocess run from DIR (its pyproject.toml puts
    DIR on the path): DIR/tests. Bytecode is neither read nor written (-B, and an empty
    bytecode folder of its own in place of every __pycache__), and no cache is left in DIR."""
    command = [
        sys.executable,
        "-B",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests",  # relative to cwd: pytest reads "[...]" in a path as a parametrization
    ]
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTEST_XDIST", "PYTEST_CURRENT_TEST"))
    }
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    with tempfile.TemporaryDirectory(prefix="mcgen-bytecode-") as bytecode:
        env["PYTHONPYCACHEPREFIX"] = bytecode  # imports look for bytecode there only
        proc = subprocess.run(
            command,
            cwd=export_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    output = proc.stdout + proc.stderr
    lines = [line.strip().strip("=").strip() for line in proc.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else f"pytest exited with code {proc.returncode}"
    return ExportedTests(command, proc.returncode, summary, output)
