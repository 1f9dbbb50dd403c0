"""mcgen's modules import each other without loops: each module's `mcgen.*` imports, read
from its source (imports inside functions included: a late import only hides a loop),
form a graph with no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parent.parent / "mcgen"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def type_checking_blocks(tree: ast.AST) -> set[ast.AST]:
    """The bodies' statements of `if TYPE_CHECKING:`: imports there never run."""
    return {
        statement
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for statement in node.body
        for statement in ast.walk(statement)
    }


def imported_names(tree: ast.AST) -> list[str]:
    """Every dotted name an import statement reaches (but those only type checkers read):
    `from a import b` may name a module a.b or an attribute of a, so both a and a.b are given
    (the caller keeps modules)."""
    names = []
    skipped = type_checking_blocks(tree)
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def nearest_module(name: str, modules: set[str]) -> str | None:
    """The module a dotted name is in: itself, or the closest enclosing module."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> nx.DiGraph:
    sources = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(sources)
    for module, path in sources.items():
        for name in imported_names(ast.parse(path.read_text(encoding="utf-8"))):
            target = nearest_module(name, set(sources))
            # `from mcgen.x import y` names the package mcgen.x too: running it imports the
            # package, but a package's own modules may name it without a loop.
            if target is not None and target != module and not module.startswith(target + "."):
                graph.add_edge(module, target)
    return graph


def test_the_graph_sees_the_imports_of_a_module():
    graph = import_graph()
    assert graph.has_edge("mcgen.cli", "mcgen.build")
    assert graph.has_edge("mcgen.search.worker", "mcgen.search.objective")


def test_no_module_of_mcgen_imports_one_that_imports_it_back():
    cycles = sorted(" -> ".join([*c, c[0]]) for c in nx.simple_cycles(import_graph()))
    assert not cycles, "import loops:\n" + "\n".join(cycles)
