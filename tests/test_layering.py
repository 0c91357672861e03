"""The package's shape, read from its source: levels only import downward, no circles, few lazy imports.

Why a test: a circle or an upward import is invisible until someone moves a module and the import order
breaks, or until a low layer (the artifact, the model) quietly depends on a feature built on top of it.
The levels are the README's "Layout" section; the element registry's circle is the one intended one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import scopecli

ROOT = Path(scopecli.__file__).resolve().parent

# lowest first; a module may import its own level and below, never above
LEVELS = [
    ("scopecli.core", 0),
    ("scopecli.data", 1), ("scopecli.model", 1), ("scopecli.artifact", 1),
    ("scopecli.render", 2), ("scopecli.collect", 2), ("scopecli.spaces", 2), ("scopecli.compare", 2),
    ("scopecli.views", 3),
    ("scopecli.jobs", 4), ("scopecli.export", 4),
    ("scopecli.demo", 5), ("scopecli.serve", 5),
    ("scopecli.cli", 6), ("scopecli.__main__", 6), ("scopecli", 6),
]
# the element registry imports its elements to register them, and each element registers through it
INTENDED_CIRCLES = [{"scopecli.artifact.registry", "scopecli.artifact.elements"}]
MAX_LAZY = 20  # in-function scopecli imports outside cli.py, each with a `# lazy: reason` comment


def level(module: str) -> int:
    for prefix, lv in LEVELS:
        if module == prefix or module.startswith(prefix + "."):
            return lv
    raise AssertionError(f"{module} has no level: add its package to LEVELS and the README's layout")


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        if path.is_relative_to(ROOT / "schema"):
            continue
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(mods: dict[str, Path]):
    """(importer, imported module, line, in a function?, source line) for every scopecli import."""
    def target(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    for mod, path in mods.items():
        text = path.read_text()
        lines = text.splitlines()
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]

        def walk(node, in_function):
            for child in ast.iter_child_nodes(node):
                inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                if isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                        base = ".".join(parts + ([base] if base else []))
                    names = [f"{base}.{a.name}" for a in child.names]
                elif isinstance(child, ast.Import):
                    names = [a.name for a in child.names]
                else:
                    yield from walk(child, inner)
                    continue
                for name in names:
                    if name.split(".")[0] == "scopecli":
                        t = target(name)
                        if t and t != mod:
                            yield mod, t, child.lineno, inner, lines[child.lineno - 1]

        yield from walk(ast.parse(text), False)


@pytest.fixture(scope="module")
def graph():
    mods = modules()
    return mods, list(imports(mods))


def test_every_module_has_a_level(graph):
    mods, _ = graph
    for mod in mods:
        level(mod)


def test_no_upward_imports(graph):
    _, edges = graph
    upward = [f"{a} (level {level(a)}) imports {b} (level {level(b)}), line {n}"
              for a, b, n, _, _ in edges if level(b) > level(a)]
    assert not upward, "\n".join(upward)


def _group(module: str) -> str:
    return "scopecli.artifact.elements" if module.startswith("scopecli.artifact.elements.") else module


def test_no_import_circles_but_the_registry(graph):
    _, edges = graph
    succ: dict[str, set[str]] = {}
    for a, b, *_ in edges:
        a, b = _group(a), _group(b)
        if a != b:
            succ.setdefault(a, set()).add(b)
    # strongly connected components (Tarjan), every import counted, lazy ones too
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in succ.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)

    for v in list(succ):
        if v not in index:
            visit(v)
    unexpected = [sorted(c) for c in found if c not in INTENDED_CIRCLES]
    assert not unexpected, unexpected


def test_lazy_imports_are_few_and_say_why(graph):
    _, edges = graph
    lazy = {(a, n): src for a, _, n, inner, src in edges if inner and a != "scopecli.cli"}
    unexplained = [f"{a}:{n}: {src.strip()}" for (a, n), src in lazy.items() if "# lazy:" not in src]
    assert not unexplained, "in-function imports need a `# lazy: reason` comment:\n" + "\n".join(unexplained)
    assert len(lazy) <= MAX_LAZY, f"{len(lazy)} in-function scopecli imports outside cli.py (at most {MAX_LAZY})"


def test_the_checks_see_a_violation(tmp_path, monkeypatch):
    """The reader finds an upward, a lazy and a circular import in a planted package (it can fail)."""
    pkg = tmp_path / "scopecli"
    (pkg / "core").mkdir(parents=True)
    (pkg / "views").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "views" / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("from scopecli.views import b\n")
    (pkg / "views" / "b.py").write_text("def f():\n    from scopecli.core import a\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", pkg)
    mods = modules()
    edges = list(imports(mods))
    assert ("scopecli.core.a", "scopecli.views.b") in {(a, b) for a, b, *_ in edges}
    assert any(inner for *_, inner, _ in edges)
    with pytest.raises(AssertionError):
        test_no_upward_imports((mods, edges))
    with pytest.raises(AssertionError):
        test_no_import_circles_but_the_registry((mods, edges))
    with pytest.raises(AssertionError):
        test_lazy_imports_are_few_and_say_why((mods, edges))
