"""The package's import graph, read from the source (``ast``; nothing is imported): which module
imports which, lazy imports inside functions included. The search never imports the runner, the
runner never imports what sits above it (no import cycle at all: tests/test_import_graph.py)."""

from __future__ import annotations

from test_import_graph import import_graph as _graph

#: packages above the runner: they may import it, it must not import them
ABOVE_RUNNER = ("tlsearch.export", "tlsearch.report", "tlsearch.commands", "tlsearch.cli",
                "tlsearch.api", "tlsearch.keras_tuner", "tlsearch.dashboard")


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_search_never_imports_the_runner():
    bad = sorted(f"{a} -> {b}" for a, bs in _graph().items() if _in(a, "tlsearch.search")
                 for b in bs if _in(b, "tlsearch.runner"))
    assert not bad, bad


def test_the_runner_imports_nothing_above_it():
    bad = sorted(f"{a} -> {b}" for a, bs in _graph().items() if _in(a, "tlsearch.runner")
                 for b in bs if any(_in(b, up) for up in ABOVE_RUNNER))
    assert not bad, bad


def test_the_optuna_adapter_imports_neither_the_search_nor_the_runner():
    edges = _graph()["tlsearch.optuna_adapter"]
    assert edges <= {"tlsearch.errors"}, edges


def test_the_graph_reader_sees_lazy_and_relative_imports():
    """The checks above are only as good as the reader: a lazy import inside a function counts."""
    edges = _graph()
    assert "tlsearch.runner.fleet" in edges["tlsearch.commands.run"]  # imported inside run()
    assert "tlsearch.search.study" in edges["tlsearch.runner.prepare"]
