"""The import graph of `src/jaxlayer` and its size limits, from the source text.

`python tools/source_layout.py` prints every import circle, every file over
`MAX_FILE_LINES` lines and every function over `MAX_FUNCTION_LINES` lines,
and exits non-zero if there is a circle or an oversized file.
`tests/test_source_layout.py` runs the same checks.

An import counts wherever it is written (module level or inside a
function): a lazy import that closes a circle still hides one. `from . import
x` is an edge to `x` only, since a package is always imported before its
submodules.
"""

from __future__ import annotations

import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1] / "src"
PACKAGE = "jaxlayer"
MAX_FILE_LINES = 550
MAX_FUNCTION_LINES = 60


def modules(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
    """Module name -> file, for every `.py` file of the package."""
    found = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    names = [f"{target}.{alias.name}" for alias in node.names]
    return names if node.module is None else [target, *names]


def import_graph(found: dict[str, pathlib.Path]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    graph = {}
    for module, path in found.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = set()
        for node in ast.walk(tree):
            for name in _imported(node, module, path.name == "__init__.py"):
                if name in found and name != module:
                    targets.add(name)
        graph[module] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles found by a depth-first search, each closed on itself."""
    state: dict[str, int] = {}
    found: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                found.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def long_files(found: dict[str, pathlib.Path]) -> list[tuple[str, int]]:
    sizes = [(module, len(path.read_text().splitlines())) for module, path in found.items()]
    return [(module, size) for module, size in sizes if size > MAX_FILE_LINES]


def long_functions(found: dict[str, pathlib.Path]) -> list[tuple[str, int]]:
    result = []
    for module, path in found.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    result.append((f"{module}.{node.name}", size))
    return sorted(result, key=lambda item: -item[1])


def main() -> int:
    found = modules()
    graph = import_graph(found)
    bad = False
    for circle in circles(graph):
        print("import circle:", " -> ".join(circle))
        bad = True
    for module, size in long_files(found):
        print(f"file over {MAX_FILE_LINES} lines: {module} ({size})")
        bad = True
    for name, size in long_functions(found):
        print(f"function over {MAX_FUNCTION_LINES} lines: {name} ({size})")
    print(f"{len(found)} modules, {sum(len(t) for t in graph.values())} imports between them")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
