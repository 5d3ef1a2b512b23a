"""The import graph of the four packages: no circle among modules, no arrow from a lower package to a higher one,
and no module importing a command.

The order is cache < ingest < train < bench (ARCHITECTURE.md): the store knows no decoder or model, ingest no
trainer, and the product never imports bench. Commands are thin: what another module needs lives in a library
module. Every import statement counts, inside functions and under `TYPE_CHECKING` too: a circle that only a
deferred import keeps from failing is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cache", "ingest", "train", "bench")  # each may import only those before it


def modules() -> dict[str, Path]:
    """Every module of the four packages by dotted name (a package by its own name)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ours that module `name` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` imports the module pkg.sub; `from mod import name` imports mod.
            targets.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names)
    return {target for target in targets if target in known and target != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def rank(module: str) -> int:
    return PACKAGES.index(module.split(".")[0])


def test_the_graph_sees_the_imports_it_must():
    edges = graph()
    assert "cache.store" in edges["train.feature_cache"] and "ingest.decoders" in edges["train.inference"]
    assert "ingest.layouts.common" in edges["ingest.layouts.ffpp"]
    assert "ingest.gpu_decoders" in edges["ingest.clips"]  # imported inside a function


def test_no_package_imports_one_above_it():
    edges = graph()
    upward = sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets if rank(b) > rank(a))
    assert not upward, "imports against cache < ingest < train < bench:\n" + "\n".join(upward)


def test_no_module_imports_itself_through_others():
    edges = graph()
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                circles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(circle) for circle in circles)


MAIN_GUARD = "__name__ == '__main__'"  # as ast.unparse writes it, whichever quotes the source has


def decorator_name(decorator: ast.expr) -> str:
    """A decorator's last name: `ends` for `@ends("train")` and for `@exits.ends("train")`."""
    called = decorator.func if isinstance(decorator, ast.Call) else decorator
    return ast.unparse(called).rpartition(".")[2]


def runs_as_a_program(tree: ast.Module) -> bool:
    """Whether a module's source makes it a command: an `if __name__ == "__main__":` block, or a function wrapped
    in `ends` (cache.exits), as every command's `main` is."""
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == MAIN_GUARD:
            return True
        if isinstance(node, ast.FunctionDef) and any(decorator_name(d) == "ends" for d in node.decorator_list):
            return True
    return False


def entry_point(module: str) -> bool:
    """A package's `__main__`: what `python -m package` runs. It is there to import its package's command."""
    return module.rpartition(".")[2] == "__main__"


def commands() -> set[str]:
    """The command modules, read from their source: a new command is one without being listed anywhere."""
    return {
        name
        for name, path in modules().items()
        if entry_point(name) or runs_as_a_program(ast.parse(path.read_text(), str(path)))
    }


def test_the_commands_are_found_by_their_source():
    found = commands()
    assert {"cache.cli", "ingest.__main__", "train.run", "train.report", "bench.wheels"} <= found
    assert not found & {"cache.exits", "train.loop", "train.reporting", "ingest.clips"}


def test_no_module_imports_a_command():
    """A command may change its options and output without breaking another module, because none leans on it:
    what two commands share lives in a library module. Tests may import commands; the product may not."""
    command_modules = commands()
    imports = sorted(
        f"{module} -> {target}"
        for module, targets in graph().items()
        if not entry_point(module)
        for target in targets & command_modules
    )
    assert not imports, "imports of a command module (move what is used into a library module):\n" + "\n".join(imports)
