"""tlsearch's imports go one way: no module imports itself back through others, and no top-level
module or package imports one that imports it (which would be an import from a lower floor up).

Every ``import`` counts, those inside functions too: a lazy import up a floor is still a circle in
the design, only one that fails later. Read from the source, nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "tlsearch"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = list(p.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _known(name: str, modules: dict[str, Path]) -> str:
    while name not in modules:
        name = name.rsplit(".", 1)[0]
    return name


def import_graph() -> dict[str, set[str]]:
    """Module -> the tlsearch modules it imports (``from pkg import mod`` names ``pkg.mod``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {_known(a.name, modules) for a in node.names
                          if a.name.split(".")[0] == "tlsearch"}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                if base.split(".")[0] != "tlsearch":
                    continue
                found |= {_known(f"{base}.{a.name}", modules) for a in node.names}
        found.discard(name)
        graph[name] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _explain(graph: dict[str, set[str]], found: list[list[str]]) -> str:
    lines = []
    for component in found:
        members = set(component)
        for m in component:
            lines.append(f"{m} -> {sorted(graph[m] & members)}")
    return "\n".join(lines)


def _floor(module: str) -> str:
    """The top-level module or package a module belongs to (tlsearch.train.stages: train)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_module_imports_itself_back():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles:\n" + _explain(graph, found)


def test_no_top_level_module_or_package_imports_one_above_it():
    graph = import_graph()
    floors: dict[str, set[str]] = {}
    for m, targets in graph.items():
        floors.setdefault(_floor(m), set()).update(
            _floor(t) for t in targets if _floor(t) != _floor(m))
    found = cycles(floors)
    assert not found, "imports up a floor:\n" + _explain(floors, found)


def test_the_checker_sees_a_lazy_import_up():
    """The graph holds imports inside functions, and a circle through one is found."""
    graph = import_graph()
    assert "tlsearch.layers" in graph["tlsearch._register"]  # inside _register()
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_listing_and_validating_import_no_tensorflow(tmp_path):
    """The packages import their registries' built-in modules when imported; none of those may
    start TensorFlow or Keras, so listing backbones and validating a study stay instant."""
    import os
    import subprocess
    import sys

    from conftest import make_image_folder, write_study

    make_image_folder(tmp_path / "images", per_class=4)
    study = write_study(tmp_path / "study.yaml")
    code = ("import sys, contextlib, io\n"
            "from tlsearch.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert main(['backbones']) == 0 and main(['validate', sys.argv[1]]) == 0\n"
            "import tlsearch.data, tlsearch.modalities, tlsearch.export.formats as f\n"
            "assert tlsearch.data.formats() and tlsearch.modalities.names() and f.OPTIONAL\n"
            "print(sorted(m for m in ('tensorflow', 'keras', 'keras_hub') if m in sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code, str(study)], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "[]"
