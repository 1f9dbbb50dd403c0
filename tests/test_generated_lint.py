"""Generated code is linted like hand-written code: freshly rendered packages and exports pass
`ruff check` and `ruff format --check` with the project's rules (pyproject.toml), so that a
template change that breaks them fails here, not only at CI's lint step over generated/.

The specs cover the template branches: every memory kind (matrix and deep), aggregation,
segmentation and read form, a connector and a pool other than the default, a long name, and
a boundary list too long for one line. Exports are linted from their own folder, where the
package is first-party as it is for its user.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from spec_helpers import make_spec

from mcgen.build import render_spec
from mcgen.codegen.package import render_package
from mcgen.export import export_command, render_export
from mcgen.passes.pipeline import compile_spec
from mcgen.spec import load_spec

pytest.importorskip("ruff", reason="ruff lints the generated code (pip install '.[test]')")

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "pyproject.toml"
# Committed specs: one per memory family and aggregation that has its own template branch.
SPEC_NAMES = ("grm", "ssc", "grm_gated_delta", "titans_soup", "none", "residual_explicit")
# Tiny specs for the branches the committed ones leave out.
MANY_BOUNDARIES = "{kind: explicit, boundaries: [" + ", ".join(map(str, range(7, 400, 7))) + "]}"
TINY_SPECS = {
    "attention_residual": dict(read_form="attention", recurrence="decay", aggregation="residual"),
    "attention_ssc": dict(read_form="attention", aggregation="ssc", aggregation_extra=", top_k: 2"),
    "query_sum": dict(recurrence="delta", aggregation_extra=", connector: query, pool: sum"),
    "independent_log": dict(init="independent", segments="{kind: logarithmic, length: 2}"),
    "dla_fixed_rate_tanh": dict(
        recurrence="dla", deep="{depth: 3, activation: tanh, lr: 0.1}", aggregation="residual"
    ),
    "titans_constant_rates": dict(
        recurrence="titans",
        deep="{depth: 1, momentum: 0.5, decay: 0.1}",
        aggregation="ssc",
        aggregation_extra=", top_k: 1, connector: query",
    ),
    "many_boundaries": dict(segments=MANY_BOUNDARIES, aggregation="residual"),
    "a_rather_long_spec_name_x": dict(recurrence="gated_delta", aggregation="soup"),
}


def ruff(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """ruff with the project's settings, run from `folder` (which decides what is first-party)."""
    command = [sys.executable, "-m", "ruff", *args, "--config", str(CONFIG), "--no-cache", "."]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=300)


def assert_lint_clean(folder: Path) -> None:
    checked = ruff(folder, "check", "--output-format", "concise")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    formatted = ruff(folder, "format", "--check")
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr


def write(folder: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_rendered_packages_pass_ruff(tmp_path: Path) -> None:
    for name in SPEC_NAMES:
        command = f"mcgen build specs/{name}.yaml"
        _, _, package = render_spec(ROOT / "specs" / f"{name}.yaml", command=command)
        write(tmp_path / name, package.files)
    for name, fields in TINY_SPECS.items():
        spec = make_spec(name=name, **fields)
        command = f"mcgen build specs/{name}.yaml"
        package = render_package(spec, compile_spec(spec).plan, command=command)
        write(tmp_path / name, package.files)
    assert len(list(tmp_path.glob("*/ops.py"))) == len(SPEC_NAMES) + len(TINY_SPECS)
    assert_lint_clean(tmp_path)


@pytest.mark.parametrize("name", ["grm_gated_delta", "titans_soup", "residual_explicit"])
def test_exports_with_their_model_pass_ruff(tmp_path: Path, name: str) -> None:
    spec_path = ROOT / "specs" / f"{name}.yaml"
    spec = load_spec(spec_path).spec
    out = tmp_path / "a folder with a long path, as a user's may be" / name
    # The command, with its long --out, is what the files' header comments state.
    command = export_command(spec_path, out, name, model=True)
    write(out, render_export(spec, compile_spec(spec).plan, name=name, command=command, model=True))
    assert (out / name / "hf.py").is_file() and (out / "README.md").is_file()
    assert_lint_clean(out)
