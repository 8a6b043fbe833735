"""``tlsearch serve EXPORT_DIR``: an exported model behind HTTP (Starlette on uvicorn).

* :mod:`tlsearch.serve.inputs`: what a request may hold, read under limits (no web stack);
* :mod:`tlsearch.serve.batching`: requests arriving together run through the model in one call;
* :mod:`tlsearch.serve.app`: the ASGI app (``/health``, ``/metadata``, ``/predict``);
* :mod:`tlsearch.serve.server`: one process or ``--workers N`` on one socket.

The web stack is the optional extra ``serve`` (``pip install 'tlsearch[serve]'``); nothing else in
tlsearch imports this package, so ``import tlsearch`` and ``tlsearch validate`` never load it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "serve", "ServeOptions", "Limits"]

_HOME = {"create_app": "app", "serve": "server", "ServeOptions": "server", "Limits": "inputs"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'tlsearch.serve' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"tlsearch.serve.{_HOME[name]}"), name)
