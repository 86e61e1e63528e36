"""The package's imports run one way (issues 14 and 24), lazy and type-only imports included.

The layers, top-down (docs: README's layout table)::

    tools (preflight, study, results, the eval command lines) -> trainer -> run_record
    -> tasks -> {eval, models, data} -> {optim, checkpoint, run_dir, hub, checks, cpu_memory}

A module imports only modules of its own layer or below, and no module imports one that
imports it back. Inside ``optim/`` the step paths import only the base modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "alphaadam"
OPTIM = PACKAGE / "optim"
BASE_MODULES = {"masking", "adam_math", "sharding"}
STEP_PATHS = {"reference_paths", "fused_cpu", "fused_compile", "fused_triton"}

# Each module's layer, by the longest prefix of its dotted name listed here (higher imports
# lower). The eval command lines rebuild a run's task or model, so they sit with the tools.
LAYERS = {
    "alphaadam": 6,  # the package's __init__
    "alphaadam.preflight": 6,
    "alphaadam.study": 6,
    "alphaadam.results": 6,
    "alphaadam.eval.export": 6,
    "alphaadam.eval.gsm8k_run": 6,
    "alphaadam.trainer": 5,
    "alphaadam.run_record": 4,
    "alphaadam.tasks": 3,
    "alphaadam.eval": 2,
    "alphaadam.models": 2,
    "alphaadam.data": 2,
    "alphaadam.optim": 1,
    "alphaadam.checkpoint": 1,
    "alphaadam.run_dir": 1,
    "alphaadam.hub": 1,
    "alphaadam.checks": 1,
    "alphaadam.cpu_memory": 1,
    "alphaadam.config_keys": 0,  # which config keys may change on resume (no imports)
}
# Not yet one way (issue 24): run_record.py names the trainer's Run, TrainingSetup, StepResult
# and TrainState (for type annotations only) until they move out of trainer.py into a leaf
# module; results/figures.py imports figures_scaling.py (in a function), which imports it
# back for FigureReport, _save and method_color.
PENDING = {
    ("alphaadam.run_record", "alphaadam.trainer"),
    ("alphaadam.results.figures", "alphaadam.results.figures_scaling"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The package modules an import statement of ``module`` names."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        package = module.split(".")
        if MODULES[module].name != "__init__.py":
            package = package[:-1]
        base = package[: len(package) - node.level + 1] if node.level else []
        target = ".".join(base + ([node.module] if node.module else []))
        # ``from X import Y``: the module X.Y, else the module X (Y is a name in it).
        names = [
            f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target
            for alias in node.names
        ]
    out = set()
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]  # ``import alphaadam.x.y``: the deepest module
        if name.startswith("alphaadam") and name != module:
            out.add(name)
    return out


def _package_imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its body (lazy, type-only)."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps |= _imported(module, node)
        graph[module] = deps
    return graph


def _layer(module: str) -> int:
    prefixes = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    assert prefixes, f"{module} has no layer in LAYERS"
    return LAYERS[max(prefixes, key=len)]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, done = [], set()

    def visit(name: str, path: list[str]) -> None:
        for dep in sorted(graph[name]):
            if dep in path:
                found.append(path[path.index(dep) :] + [dep])
            elif dep not in done:
                visit(dep, path + [dep])
        done.add(name)

    for name in sorted(graph):
        visit(name, [name])
    return found


def _optim_imports() -> dict[str, set[str]]:
    """optim module -> the optim modules it imports (by their short names)."""
    graph = _package_imports()
    prefix = "alphaadam.optim."
    return {
        name[len(prefix) :]: {d[len(prefix) :] for d in deps if d.startswith(prefix)}
        for name, deps in graph.items()
        if name.startswith(prefix) and name.count(".") == 2
    }


def test_the_import_scan_sees_relative_absolute_lazy_and_type_only_imports():
    graph = _package_imports()
    assert "alphaadam.optim.step_paths" in graph["alphaadam.optim.alphaadam"]  # relative
    assert "alphaadam.trainer" in graph["alphaadam.eval.export"]  # absolute, in a function
    assert "alphaadam.trainer" in graph["alphaadam.run_record"]  # under TYPE_CHECKING
    assert "alphaadam.checks" in graph["alphaadam.tasks.base"]


def test_no_import_cycles():
    graph = _package_imports()
    for module, dep in PENDING:
        graph[module] = graph[module] - {dep}
    assert _cycles(graph) == []


def test_every_import_points_to_the_same_layer_or_below():
    upward = sorted(
        (module, dep)
        for module, deps in _package_imports().items()
        for dep in deps
        if _layer(dep) > _layer(module) and (module, dep) not in PENDING
    )
    assert upward == []


def test_the_pending_exceptions_still_exist():
    # Once one is fixed, its entry must go, so that it cannot come back unnoticed.
    graph = _package_imports()
    assert all(dep in graph[module] for module, dep in PENDING)


def test_no_optim_import_cycles():
    assert _cycles(_optim_imports()) == []


def test_step_paths_import_only_the_base_modules():
    graph = _optim_imports()
    for path in STEP_PATHS:
        assert graph[path] <= BASE_MODULES, (path, graph[path] - BASE_MODULES)
    for base in BASE_MODULES:
        assert graph[base] <= BASE_MODULES, (base, graph[base] - BASE_MODULES)
