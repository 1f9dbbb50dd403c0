"""Render a spec's plan into a self-contained python package (written by mcgen.packages)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from mcgen import __version__
from mcgen.codegen.literals import py_literal
from mcgen.codegen.templates import environment
from mcgen.codegen.written import WrittenChoices
from mcgen.ir.plan import Plan
from mcgen.packages import MANIFEST, write_package
from mcgen.spec import Spec, spec_hash

# Rendered in this order; each becomes <name>/<file>.
PACKAGE_FILES = (
    "__init__.py",
    "spec.py",
    "cache.py",
    "reference.py",
    "backend_torch.py",
    "ops.py",
    "layer.py",
    "selftest.py",
)
# Files a deep memory (dla, titans) renders from templates/package/deep/ instead.
DEEP_FILES = frozenset({"cache.py", "reference.py", "backend_torch.py", "ops.py", "layer.py"})
# The ops key while the code is first rendered (the key is the digest of that code).
UNKEYED_OPS = "0" * 64
# What the generated code needs at run time (it never imports mcgen).
REQUIRES = {"python": ">=3.10", "torch": ">=2.4"}


@dataclass(frozen=True)
class RenderedPackage:
    name: str
    files: dict[str, str]  # file name -> text, manifest.json included

    def write(self, out_dir: Path) -> Path:
        """Write to out_dir/<name>/, replacing only a package mcgen built, and only once
        every file is ready (mcgen.packages.write_package)."""
        return write_package(Path(out_dir), self.name, self.files)


def render_package(spec: Spec, plan: Plan, *, command: str) -> RenderedPackage:
    """Every file of the package for `spec` (resolved), computing what `plan` says."""
    digest = spec_hash(spec)
    context = {
        "spec": spec,
        "plan": plan,
        "spec_hash": digest,
        "ops_key": UNKEYED_OPS,  # the code's digest, once the code is rendered (below)
        "spec_literal": py_literal(spec.model_dump(mode="json")),
        "mcgen_version": __version__,
        "command": header_command(command),
        # What the spec as written chose: the reference and spec.py follow it.
        "written": WrittenChoices.of(spec),
        "backends": ("torch", "triton") if has_triton(plan) else ("torch",),
        "plan_inputs": plan_inputs(plan),
    }
    env = environment()

    def render(name: str, values: dict[str, object]) -> str:
        return env.get_template(_template_name(name, plan)).render(values)

    # The custom ops are named after the code they run: torch.compile's caches key graphs on
    # op names, so a rebuild whose code changed must name its ops anew (and one whose code
    # did not, keep them). The code is rendered with the placeholder key, then the files that
    # name the ops (they hold the placeholder) again with the digest of it.
    files = {name: render(name, context) for name in package_files(plan)}
    code = hashlib.sha256(digest.encode())
    for name, text in files.items():
        code.update(name.encode() + b"\0" + _without_header(text).encode() + b"\0")
    keyed = {**context, "ops_key": code.hexdigest()}
    files.update(
        {name: render(name, keyed) for name, text in files.items() if UNKEYED_OPS[:12] in text}
    )
    manifest = {
        "name": spec.name,
        "spec_hash": digest,
        "spec": spec.model_dump(mode="json"),
        "plan_notes": list(plan.notes),
        "mcgen_version": __version__,
        "requires": REQUIRES,
        "files": {name: hashlib.sha256(text.encode()).hexdigest() for name, text in files.items()},
    }
    files[MANIFEST] = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    return RenderedPackage(spec.name, files)


def _without_header(text: str) -> str:
    """A file's text after its leading comment lines (the header, which names the build
    command: a comment, not code)."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    return "".join(lines[start:])


def plan_inputs(plan: Plan) -> tuple[str, ...]:
    """The optional op inputs that the plan's computation reads, in the ops' order: what the
    backends take (the public ops take them all, and refuse those the spec does not read)."""
    return ("u",) * plan.uses_u + plan.rate_inputs


def has_triton(plan: Plan) -> bool:
    """Triton kernels and their glue, for the recurrences that name a kernel template."""
    return plan.deep is None and plan.recurrence_component.triton_template is not None


def package_files(plan: Plan) -> tuple[str, ...]:
    """The files of a package, in render order: the Triton ones only where kernels exist."""
    if not has_triton(plan):
        return PACKAGE_FILES
    kernels = ["triton_recurrence.py"]
    if plan.gated:
        kernels.append("triton_key_sums.py")  # the gate's online logit and descriptors
    if plan.caches:
        # State form always: it also reads memories cached by earlier calls, which the
        # attention form cannot (their keys are gone). A top-k gate (ssc) reads it as a
        # grouped sparse read.
        sparse = plan.aggregation_component.selects_top_k
        kernels.append("triton_read_sparse.py" if sparse else "triton_read_state.py")
        if plan.read_form == "attention":
            kernels.append("triton_read_attention.py")
    return (*PACKAGE_FILES, *kernels, "backend_triton.py")


def _template_name(file_name: str, plan: Plan) -> str:
    """Deep memories have their own versions of some files (templates/package/deep/); the
    recurrence kernel is the recurrence's own template (the delta rules' WY form is rendered
    under the same file name: the glue and the read kernels do not care how the states were
    made)."""
    if plan.deep is not None and file_name in DEEP_FILES:
        return f"package/deep/{file_name}.jinja"
    if file_name == "triton_recurrence.py":
        template = plan.recurrence_component.triton_template
        assert template is not None  # package_files lists it only then
        return template
    return f"package/{file_name}.jinja"


def header_command(command: str) -> str:
    """The command as the files' header comments state it: one line, forward slashes, and
    only characters that cannot change how python reads the file. A path may hold anything:
    other characters are written %XX-escaped (URL style), which also breaks a PEP 263
    `coding=...` declaration (python reads one on the header's first two lines)."""
    one_line = " ".join(command.split()).replace("\\", "/")
    return quote(one_line, safe=_HEADER_SAFE)


# Letters, digits and these stay as they are in a header command (no ':' or '=': PEP 263).
_HEADER_SAFE = " /._-+,@~"
