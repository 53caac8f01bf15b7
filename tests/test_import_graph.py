"""hashbench's modules import each other without cycles (function-level imports included),
and the core never imports a plugin module by name."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Where each installed package's files live (pyproject's package-dir mapping).
PACKAGES = {"hashbench": ROOT / "hashbench", "hashbench.methods": ROOT / "methods", "hashbench.datasets": ROOT / "datasets"}


def _modules() -> dict[str, Path]:
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            if package == "hashbench" and parts and parts[0] in ("methods", "datasets"):
                continue
            modules[name] = path
    return modules


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """The hashbench modules that ``module`` imports anywhere in its file."""
    found = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from package import submodule`` imports the submodule; any other name comes
            # from the package's own module.
            submodules = [f"{base}.{alias.name}" for alias in node.names]
            names = [name for name in submodules if name in known]
            if len(names) < len(submodules):
                names.append(base)
        else:
            continue
        for name in names:
            # The longest known module the name denotes (``hashbench.x.y`` may be an attribute).
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_the_walker_sees_real_edges_and_finds_a_planted_cycle():
    graph = _graph()
    assert "hashbench.storage.records" in graph["hashbench.storage.store"]
    assert "hashbench.report.results" in graph["hashbench.report.tables"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycle_among_hashbench_modules():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" → ".join(cycle) for cycle in cycles)


def test_the_core_never_imports_a_plugin_by_name():
    graph = _graph()
    offenders = {
        module: sorted(t for t in targets if t.startswith(("hashbench.methods", "hashbench.datasets")))
        for module, targets in graph.items()
        if not module.startswith(("hashbench.methods", "hashbench.datasets"))
    }
    assert not {m: t for m, t in offenders.items() if t}


# The layers of the package, lowest first: a module may import its own layer and those
# below, never one above (the plugins sit above what a plugin may use, below the harness).
LAYERS = [
    ["hashbench.errors"],
    ["hashbench.storage", "hashbench.params", "hashbench.codes", "hashbench.reproducibility", "hashbench.progress",
     "hashbench.metric_table"],
    ["hashbench.environment", "hashbench.data", "hashbench.method"],
    ["hashbench.registry", "hashbench.metrics", "hashbench.toolkit"],
    ["hashbench.deep", "hashbench.conformance"],
    ["hashbench.methods", "hashbench.datasets"],
    ["hashbench.run"],
    ["hashbench.report"],
    ["hashbench.cli", "hashbench.__main__"],
]


def _layer(module: str) -> int | None:
    if module == "hashbench":  # the package's own __init__: its version, a lazy evaluate
        return 1
    for rank, layer in enumerate(LAYERS):
        if any(module == name or module.startswith(name + ".") for name in layer):
            return rank
    return None


def test_every_module_has_a_layer_and_none_imports_upward():
    graph = _graph()
    unplaced = sorted(module for module in graph if _layer(module) is None)
    assert not unplaced, f"modules in no layer: {unplaced}"
    upward = sorted(
        f"{module} → {target}"
        for module, targets in graph.items()
        for target in targets
        if _layer(target) > _layer(module) and not (module == "hashbench" and target == "hashbench.metrics")
    )
    assert not upward, "upward imports: " + "; ".join(upward)


def test_the_layer_check_catches_a_planted_upward_import():
    assert _layer("hashbench.storage.store") < _layer("hashbench.run.runner") < _layer("hashbench.cli.run")
    assert _layer("hashbench.methods.itq") < _layer("hashbench.run.runner")
