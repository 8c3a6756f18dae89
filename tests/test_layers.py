"""The import rules of docs/architecture.md, read from every module's source.

A package may import only the packages below it; no module imports another
module's private (underscore) names; the modules import no circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "core": set(),
    "device_profiles": {"core"},
    "pruner": {"core"},
    "agent": {"core", "device_profiles"},
    "fleet": {"core", "device_profiles"},
    "tuner": {"core", "device_profiles", "pruner", "fleet"},
    "hostcli": {"core", "device_profiles", "pruner", "fleet", "tuner", "console", "conformance"},
    # the web console: a peer of the CLI (which starts it) over fleet and device_profiles
    "console": {"core", "device_profiles", "fleet"},
    "conformance": {"core"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, package: str | None = None) -> list[tuple[str, list[str], int]]:
    """(imported module, names, line) for every import statement, nested ones included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    if package is None:
        me = module_name(path)
        package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((base, [a.name for a in node.names], node.lineno))
    return found


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in ALLOWED for p in (ROOT / pkg).rglob("*.py")}


def test_no_package_imports_upward():
    bad = []
    for name, path in project_modules().items():
        own = name.split(".")[0]
        for target, _, line in imports(path):
            top = target.split(".")[0]
            if top in ALLOWED and top != own and top not in ALLOWED[own]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target} ({own} -> {top})")
    assert not bad, "imports against docs/architecture.md:\n" + "\n".join(bad)


def test_no_private_names_across_modules():
    mods = project_modules()
    bad = []
    for name, path in mods.items():
        for target, names, line in imports(path):
            if target in mods and target != name:
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if private:
                    bad.append(f"{path.relative_to(ROOT)}:{line} takes {private} from {target}")
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_no_import_cycles_between_modules():
    mods = project_modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for target, names, _ in imports(path):
            for cand in [f"{target}.{n}" for n in names] + [target]:
                if cand in mods and cand != name:
                    deps.add(cand)
                    break
        graph[name] = deps
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*stack[stack.index(dep):], dep]))
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def top_level_names(path: Path) -> set[str] | None:
    """Names a module binds at top level; None when it resolves names dynamically."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            return None
        for sub in ast.walk(node) if isinstance(node, ast.If | ast.Try) else [node]:
            if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(sub.name)
            elif isinstance(sub, ast.Import | ast.ImportFrom):
                names.update((a.asname or a.name).split(".")[0] for a in sub.names)
            elif isinstance(sub, ast.Assign | ast.AnnAssign):
                targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
                for t in targets:
                    names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
    return None if "__getattr__" in names else names


def test_every_imported_name_exists():
    """`from pkg.mod import Name` (nested imports too) names something pkg.mod binds."""
    mods = project_modules()
    bad = []
    for path in mods.values():
        for target, names, line in imports(path):
            if target not in mods:
                continue
            defined = top_level_names(mods[target])
            if defined is None:
                continue
            missing = [n for n in names if n not in defined and f"{target}.{n}" not in mods]
            if missing:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {missing} from {target}")
    assert not bad, "imports of names that do not exist:\n" + "\n".join(bad)


def test_nested_imports_are_read(tmp_path):
    """An import inside a function counts: the checker sees agent -> pruner there."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from pruner.api import prune\n")
    assert imports(bad, package="agent") == [("pruner.api", ["prune"], 2)]
