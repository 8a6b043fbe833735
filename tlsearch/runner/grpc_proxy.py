"""The server side of a ``grpc://`` storage: Optuna's gRPC storage proxy on one database.

Many workers then hold one connection each to the proxy instead of a pool each to the database;
the proxy holds the database connections. It is built here rather than by
``optuna.storages.run_grpc_proxy_server`` (which does the same three steps and then serves) so
that the port is bound before it is announced: a busy port is an error that says so, and
``--port 0`` reports the free port it got.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from tlsearch.errors import StorageError, UserError

if TYPE_CHECKING:
    import grpc

__all__ = ["PROXY_THREADS", "make_proxy_server"]

#: requests the proxy serves at once (Optuna's default), and the database connections it may hold
PROXY_THREADS = 10


def _database_url(url: str) -> str:
    """Refuse what a proxy cannot serve; the URL itself checked as ``tlsearch run`` checks it."""
    from tlsearch.runner.journal_grpc import storage_kind
    from tlsearch.runner.sqlite_probe import check_sqlite_writable
    from tlsearch.runner.storage import check_url, redact_url

    kind = storage_kind(url)
    if kind is not None:
        what = ("Optuna's proxy does not serve a journal storage (Optuna 5.1); point the workers "
                "at the journal itself (one machine), or serve a SQLite or PostgreSQL database"
                if kind == "journal" else "a proxy serves a database, not another proxy")
        raise StorageError(f"storage: {redact_url(url)!r}: {what}")
    check_url(url)
    if url.startswith("sqlite") and ":memory:" in url:
        raise StorageError("storage: an in-memory database would end with the proxy; give a file "
                           "(sqlite:///study.db) or a PostgreSQL URL")
    check_sqlite_writable(url)
    return url


def make_proxy_server(url: str, host: str = "127.0.0.1", port: int = 13000
                      ) -> tuple[grpc.Server, int]:
    """A bound, not yet started gRPC server proxying the database at ``url``, and its port.

    The port is bound first, so a busy one writes nothing; then the database is opened (its
    tables created) once, in Optuna's cached storage as its documentation asks of a proxy. It
    records no heartbeats, since no client can send one.
    """
    import grpc
    from optuna.storages import RDBStorage, get_storage
    from sqlalchemy.exc import SQLAlchemyError

    from tlsearch.optuna_adapter import serve_storage_proxy

    from tlsearch.runner.storage import engine_kwargs, storage_error

    url = _database_url(url)
    # gRPC shares a port between servers by default (SO_REUSEPORT): a second proxy on a busy port
    # would start, and split the workers' requests with the first, instead of being refused
    server = grpc.server(ThreadPoolExecutor(max_workers=PROXY_THREADS),
                         options=[("grpc.so_reuseport", 0)])
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise UserError(f"cannot listen on {address} (the port is in use, or the address is not "
                        f"this machine's); pass another --port, or --port 0 for any free one")
    kwargs = engine_kwargs(url)  # the port is ours: now the database may be created
    if url.startswith("postgresql"):  # a connection per serving thread, as each may query
        kwargs = {**kwargs, "pool_size": PROXY_THREADS}
    try:
        storage = get_storage(RDBStorage(url, engine_kwargs=kwargs))
    except (SQLAlchemyError, ImportError, ValueError) as e:
        server.stop(None)
        raise storage_error(url, e) from None
    serve_storage_proxy(storage, server)
    return server, bound
