"""The package's shape, checked: no import cycle (module-level or inside functions), the engine imports no method,
data/ imports no engine, components never see the Trainer, small modules, and every allowed name comes from a
registry."""

from __future__ import annotations

import ast
from pathlib import Path

from dytrim.config import CHOICES
from dytrim.data.sources import SOURCES
from dytrim.debias import COMPONENTS
from dytrim.models import MODELS
from dytrim.ssl import ALGORITHMS

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 350


def _modules() -> dict[str, Path]:
    out = {}
    for p in (SRC / "dytrim").rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the dytrim modules it imports anywhere in its file (`from pkg import sub` counts as pkg.sub)."""
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            deps |= {n for n in names if n in mods and n != mod}
        graph[mod] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = 2
        stack.pop()
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_no_import_cycle_anywhere() -> None:
    graph = _imports(_modules())
    assert len(graph) > 60
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check can fail


def test_layers_point_one_way() -> None:
    graph = _imports(_modules())

    def reaches(mod: str, prefix: str) -> list[str]:
        return sorted(d for d in graph[mod] if d == prefix or d.startswith(prefix + "."))

    for mod in graph:
        if mod.startswith("dytrim.engine"):
            for method in ("dytrim.debias", "dytrim.ssl", "dytrim.pruning"):
                assert not reaches(mod, method), f"{mod} imports {reaches(mod, method)}: the engine imports no method"
        if mod.startswith("dytrim.data") or mod == "dytrim.datacard":
            assert not reaches(mod, "dytrim.engine"), f"{mod} imports {reaches(mod, 'dytrim.engine')}"
        if mod.startswith("dytrim.config"):
            for up in ("dytrim.debias", "dytrim.ssl", "dytrim.models", "dytrim.data", "dytrim.engine"):
                assert not reaches(mod, up), f"{mod} imports {reaches(mod, up)}: registries declare their names"


def test_components_never_see_the_trainer() -> None:
    for path in (SRC / "dytrim" / "debias").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        defs = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert "trainer" not in names | attrs and "bind" not in defs, path.name


def test_modules_hold_one_idea_each() -> None:
    long = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_allowed_names_come_from_the_registries() -> None:
    assert CHOICES["data.name"] == tuple(SOURCES.names())
    assert CHOICES["model.name"] == tuple(MODELS.names())
    assert CHOICES["ssl.name"] == tuple(ALGORITHMS.names())
    assert CHOICES["debias.methods"] == tuple(COMPONENTS.names())
    assert CHOICES["prune.rounding"] == ("floor", "round")  # a component's section declares its own
