"""Import arrows point one way: no cycle between modules or between sibling packages, and the
layers of docs/architecture.md hold. Every import counts: module level, inside functions and
under ``TYPE_CHECKING`` (read with ``ast``, nothing is imported)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

import taskscale

SOURCE = Path(taskscale.__file__).resolve().parent

# Lower layers never import higher ones (a module may import its own layer, or any below).
# A name is a module or a package (covering its submodules); the most specific entry wins.
LAYERS: list[tuple[str, ...]] = [
    ("cli", "__main__"),
    ("stack", "scaffold", "loadtest", "drill"),
    ("targets",),
    ("loadgen", "replication"),
    ("report", "config", "resources", "binaries"),
    ("proc", "console", "errors", "choices", "__init__"),
]


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> modules it imports, within the package at ``root`` (every import statement,
    wherever it is; ``from pkg import name`` is the submodule ``pkg.name`` when one exists)."""
    package = root.name
    paths = sorted(root.rglob("*.py"))
    modules = {module_name(p, root): p for p in paths}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(module, is_package, node.level, node.module)
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    targets.append(candidate if candidate in modules else base)
            for target in targets:
                if target != package and not target.startswith(package + "."):
                    continue
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != module:
                    graph[module].add(target)
    return graph


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def sibling_graphs(graph: dict[str, set[str]]) -> Iterable[tuple[str, dict[str, set[str]]]]:
    """For every package: its children (subpackages collapsed to one node, modules) and the
    imports between them. A package's ``__init__`` is the package itself, not a child."""
    packages = {m.rsplit(".", 1)[0] for m in graph if "." in m} | {m for m in graph if "." not in m}
    for package in sorted(packages):
        prefix = package + "."

        def child(module: str, prefix: str = prefix) -> str | None:
            if not module.startswith(prefix):
                return None
            return prefix + module[len(prefix) :].split(".", 1)[0]

        collapsed: dict[str, set[str]] = {}
        for module, targets in graph.items():
            source = child(module)
            if source is None:
                continue
            collapsed.setdefault(source, set())
            for target in targets:
                dest = child(target)
                if dest is not None and dest != source:
                    collapsed[source].add(dest)
        yield package, collapsed


def all_cycles(graph: dict[str, set[str]]) -> list[str]:
    problems = [" <-> ".join(c) for c in cycles(graph)]
    for package, collapsed in sibling_graphs(graph):
        problems += [f"in {package}: " + " <-> ".join(c) for c in cycles(collapsed)]
    return problems


def layer_of(module: str) -> int | None:
    parts = module.split(".")[1:] or ["__init__"]
    for depth in range(len(parts), 0, -1):
        name = ".".join(parts[:depth])
        for level, names in enumerate(LAYERS):
            if name in names:
                return level
    return None


def test_no_import_cycle_between_modules_or_packages() -> None:
    assert all_cycles(import_graph(SOURCE)) == []


def test_every_module_has_a_layer_and_arrows_point_down() -> None:
    graph = import_graph(SOURCE)
    unplaced = sorted(m for m in graph if layer_of(m) is None)
    assert unplaced == [], "add them to LAYERS (and to docs/architecture.md)"
    upward = [
        f"{module} -> {target}"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if (layer_of(target) or 0) < (layer_of(module) or 0)
    ]
    assert upward == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        # A cycle hidden inside a function and under TYPE_CHECKING.
        (
            {
                "pkg/__init__.py": "",
                "pkg/a.py": "def f():\n    from pkg import b\n",
                "pkg/b.py": (
                    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import f\n"
                ),
            },
            ["pkg.a <-> pkg.b", "in pkg: pkg.a <-> pkg.b"],
        ),
        # No module cycle, but the packages import each other (relative imports too).
        (
            {
                "pkg/__init__.py": "",
                "pkg/x/__init__.py": "",
                "pkg/x/one.py": "from ..y import two\n",
                "pkg/y/__init__.py": "",
                "pkg/y/two.py": "import os\n",
                "pkg/y/three.py": "from pkg.x.one import something\n",
            },
            ["in pkg: pkg.x <-> pkg.y"],
        ),
    ],
)
def test_the_check_finds_a_new_cycle(
    tmp_path: Path, files: dict[str, str], expected: list[str]
) -> None:
    root = _write(tmp_path, files) / "pkg"
    assert all_cycles(import_graph(root)) == expected


def test_the_check_passes_a_graph_without_cycles(tmp_path: Path) -> None:
    files = {
        "pkg/__init__.py": "from pkg.a import f\n",
        "pkg/a.py": "from pkg import b\ndef f():\n    from pkg.b import g\n",
        "pkg/b.py": "import json\n",
    }
    root = _write(tmp_path, files) / "pkg"
    assert all_cycles(import_graph(root)) == []


def test_layers_catch_an_upward_import() -> None:
    assert (layer_of("taskscale.targets.local.fleet") or 0) > (layer_of("taskscale.cli") or 0)
    assert layer_of("taskscale.targets.logstream") == 2
    assert layer_of("taskscale.nonexistent") is None


def test_the_cli_parses_options_without_the_settings_or_the_targets() -> None:
    """Every command pays the CLI's start (<= 0.3 s, BENCHMARKS.md): the command modules import
    pydantic's settings, the stack service and the targets when a command runs, not before."""
    code = (
        "import sys; import taskscale.cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic' "
        "or m in ('taskscale.config', 'taskscale.stack') or m.startswith('taskscale.targets')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
