"""The package layout's rules, read from the source: dependencies point one way.

Every ``import`` of a ``malpi`` module (also those inside functions) counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import malpi

ROOT = Path(malpi.__file__).resolve().parent
ROBOT_ONLY = ("malpi.daemon", "malpi.camera", "malpi.drivetrain", "malpi.setup")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """module -> the malpi modules it imports (``from m import name`` counts as ``m``)."""
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for name in names:
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name.startswith("malpi.") and name != mod:
                    deps.add(name)
        graph[mod] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _package(mod: str) -> str:
    return ".".join(mod.split(".")[:2])


def test_no_module_imports_itself_in_a_circle():
    assert _cycles(_graph()) == []


def test_no_packages_import_each_other_in_a_circle():
    packages: dict[str, set[str]] = {}
    for mod, deps in _graph().items():
        packages.setdefault(_package(mod), set()).update(
            _package(d) for d in deps if _package(d) != _package(mod)
        )
    assert _cycles(packages) == []


def _importers(prefixes: tuple[str, ...]) -> dict[str, set[str]]:
    return {
        mod: {d for d in deps if d.startswith(prefixes)}
        for mod, deps in _graph().items()
        if any(d.startswith(prefixes) for d in deps)
    }


def test_nothing_below_the_daemon_imports_it():
    # Only the command line (which starts it) and the benchmarks (which measure it) may.
    outside = {
        mod
        for mod in _importers(("malpi.daemon",))
        if not mod.startswith(("malpi.daemon", "malpi.bench"))
    }
    assert outside <= {"malpi.cli"}, outside


def test_operator_trainer_and_policy_never_import_robot_only_code():
    # malpi.web: the browser console reaches the car through the link only, like teleop.
    clients = ("malpi.operator", "malpi.web", "malpi.train", "malpi.rl", "malpi.policy")
    for mod, deps in _importers(ROBOT_ONLY).items():
        assert not mod.startswith((*clients, "malpi.protocol")), (mod, deps)


def test_the_policy_knows_no_hardware_and_no_network():
    graph = _graph()
    # Beside itself and the action table, only leaf helpers (malpi.quiet, malpi.textout:
    # top-level modules importing nothing of malpi) are allowed.
    leaves = {m for m, deps in graph.items() if m.count(".") == 1 and not deps}
    for mod, deps in graph.items():
        if mod.startswith("malpi.policy"):
            outside = {d for d in deps if not d.startswith(("malpi.policy", "malpi.actions"))}
            assert outside <= leaves, (mod, outside)
