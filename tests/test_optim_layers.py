"""The optim package's imports run one way (issue 14): no module imports one that imports it
back, lazily or not, and the step paths import only the base modules."""

from __future__ import annotations

import ast
from pathlib import Path

OPTIM = Path(__file__).resolve().parents[1] / "src" / "alphaadam" / "optim"
BASE_MODULES = {"masking", "adam_math", "sharding"}
STEP_PATHS = {"reference_paths", "fused_cpu", "fused_compile", "fused_triton"}


def _relative_imports() -> dict[str, set[str]]:
    """Module -> the sibling modules it imports anywhere in its body (lazy imports too)."""
    modules = {p.stem for p in OPTIM.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name in modules:
        deps: set[str] = set()
        for node in ast.walk(ast.parse((OPTIM / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(alias.name for alias in node.names)
        graph[name] = deps & modules
    return graph


def test_no_import_cycles():
    graph = _relative_imports()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        for dep in graph[name]:
            assert dep not in path, f"import cycle: {' -> '.join(path + [dep])}"
            if dep not in done:
                visit(dep, path + [dep])
        done.add(name)

    for name in sorted(graph):
        visit(name, [name])


def test_step_paths_import_only_the_base_modules():
    graph = _relative_imports()
    for path in STEP_PATHS:
        assert graph[path] <= BASE_MODULES, (path, graph[path] - BASE_MODULES)
    for base in BASE_MODULES:
        assert graph[base] <= BASE_MODULES, (base, graph[base] - BASE_MODULES)
