"""Make ``import tlsearch`` enough to load an exported ``model.keras``.

Keras finds a saved model's custom layers (``tlsearch>Preprocess``, ``tlsearch>RawTextModel``, ...)
only once their classes are registered, which happens when :mod:`tlsearch.layers` is imported, and
that imports Keras and TensorFlow (seconds). ``import tlsearch`` should not cost that for
``tlsearch validate``, yet a user who writes ``import tlsearch`` and then loads a model with Keras
must find the layers. So: if Keras is already imported, the layers are registered at once; if not,
they are registered right after Keras finishes importing, whenever that happens.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from typing import Any

__all__ = ["register_layers_with_keras"]


def _register() -> None:
    import tlsearch.layers  # noqa: F401  (the decorators register each layer)


class _AfterKeras(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of ``keras`` so that, once Keras is loaded, tlsearch's
    layers are registered with it."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "keras":
            return None
        sys.meta_path.remove(self)  # once; the real finders locate keras
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_register(module: Any) -> None:
            exec_module(module)
            _register()

        loader.exec_module = exec_and_register  # type: ignore[method-assign]
        return spec


def register_layers_with_keras() -> None:
    if "keras" in sys.modules:
        _register()
    elif not any(isinstance(f, _AfterKeras) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterKeras())
