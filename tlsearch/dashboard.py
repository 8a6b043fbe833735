"""optuna-dashboard on a study's storage and artifact folder, bound to localhost unless told.

Served in-process (not by launching the ``optuna-dashboard`` command) so the storage URL, which may
carry a password, never appears in a process list, and so the port is bound before the URL is
printed: a port already in use is an error that says so, not a log line lost in the output.
"""

from __future__ import annotations

import socketserver
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from tlsearch.errors import UserError

__all__ = ["make_dashboard_server", "dashboard_url"]


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # one line per request would drown the URL
        pass


def dashboard_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/dashboard/"


def make_dashboard_server(cfg, *, host: str = "127.0.0.1", port: int = 8080,
                          url: str | None = None):
    """A bound (not yet serving) WSGI server for the study; call ``serve_forever()`` on it."""
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    from tlsearch.runner.storage import open_storage
    from tlsearch.runner.prepare import load_study

    load_study(cfg, url)  # a clear error when there is no study yet
    storage = open_storage(cfg, url, heartbeat=False)
    store = None
    if cfg.artifact_dir.is_dir():
        store = FileSystemArtifactStore(cfg.artifact_dir)
    app = optuna_dashboard.wsgi(storage, artifact_store=store)
    try:
        return make_server(host, port, app, server_class=_ThreadingWSGIServer,
                           handler_class=_QuietHandler)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass another "
                        f"--port, or --port 0 for any free one") from None
