"""Where a study lives: database URLs checked before anything is read, storages opened with
heartbeats, and connection failures worded without the password.

Passwords are masked by :func:`tlsearch._urls.redact_url` (below the search, which shows URLs
too); the locks shared by the processes of one storage live in :mod:`tlsearch.runner.locks`.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from optuna.storages import BaseStorage
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from tlsearch._urls import redact_url, unencoded_at
from tlsearch.config import StudyConfig
from tlsearch.errors import StorageError, connection_words, is_connection_error
from tlsearch.optuna_adapter import HeartbeatSafeStorage
from tlsearch.runner.stale import Retry
from tlsearch.runner.journal_grpc import (check_other_url, open_other_storage, other_missing,
                                          storage_kind)

__all__ = ["redact_url", "storage_error", "engine_kwargs", "check_url", "open_storage",
           "sqlite_missing", "server_answers", "PG_POOL_SIZE"]


def storage_error(url: str, e: BaseException) -> StorageError:
    """A :class:`StorageError` for a failed connection, with any password scrubbed out."""
    reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0] if str(e).strip() else (
        type(e).__name__)
    try:
        password = make_url(url).password
    except Exception:
        password = None
    if password:
        reason = reason.replace(str(password), "***")
    return StorageError(f"storage: cannot open {redact_url(url)}: {reason}")


#: PostgreSQL connections a worker process holds at most: its storage's pool, which the study lock
#: and the heartbeat thread share (a fleet of N workers needs 2N + a few of ``max_connections``)
PG_POOL_SIZE = 2


def engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True,
                "pool_size": PG_POOL_SIZE, "max_overflow": 0, "pool_timeout": 120}
    if url.startswith("mysql"):
        return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    return {}


def check_url(url: str) -> None:
    """Refuse a malformed URL at once, before the data is read or anything is written. No message
    shows any part of a password."""
    shown = redact_url(url)
    unset = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", shown)
    if unset:
        raise StorageError(f"storage: {shown!r}: the environment variable "
                           f"{', '.join(sorted(set(unset)))} is not set")
    if storage_kind(url) is not None:  # journal:, grpc: (tlsearch.runner.journal_grpc)
        return check_other_url(url)
    try:
        u = make_url(url)
    except ArgumentError:
        raise StorageError(f"storage: {shown!r} is not a database URL (expected for "
                           f"example sqlite:///study.db or postgresql+psycopg://user@host/db)"
                           ) from None
    except ValueError:
        raise StorageError(f"storage: {shown!r}: cannot read its host and port (expected host, "
                           f"host:5432 or [::1]:5432, the port a number)") from None
    try:
        u.get_dialect()
    except NoSuchModuleError:
        backend = u.get_backend_name()
        hint = ("postgresql+psycopg://user@host/db (SQLAlchemy spells PostgreSQL "
                "'postgresql', not 'postgres')" if backend == "postgres" else
                "sqlite:///study.db or postgresql+psycopg://user@host/db")
        raise StorageError(f"storage: {shown!r}: SQLAlchemy knows no database "
                           f"{u.drivername!r}; expected for example {hint}") from None
    except ImportError as e:
        raise StorageError(f"storage: {shown!r}: its driver is not installed ({e}); for "
                           f"PostgreSQL use postgresql+psycopg://, whose driver tlsearch "
                           f"installs") from None
    if unencoded_at(url) or (u.host and "@" in u.host):
        raise StorageError(f"storage: {shown!r}: the user name or password holds an unencoded "
                           f"'@'; URL-encode it (%40 for @, as for : / ? # % and spaces)")


class _DroppedConnectionLine(logging.Handler):
    """SQLAlchemy's pool logs a connection the server dropped (``pg_terminate_backend``, a restart)
    with its whole traceback when it fails to reset it on return; the pool replaces it and the
    run goes on, so one line says so instead. A handler on ``sqlalchemy.pool``, since the pool
    logs through loggers below it (``sqlalchemy.pool.impl.QueuePool``), whose records a filter on
    ``sqlalchemy.pool`` would not see: the record is made one line here, before the handlers
    above it (the root's, if any) get it; with none, it is printed on stderr as Python's
    last-resort handler would."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def handle(self, record: logging.LogRecord) -> bool:
        e = record.exc_info[1] if record.exc_info else None
        if e is not None and is_connection_error(e):
            record.msg = (f"a database connection was dropped ({connection_words(e)[:160]}); "
                          f"the pool replaces it")
            record.args, record.exc_info, record.exc_text = (), None, None
        return super().handle(record)

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:  # the root's handlers print it (one line now)
            return
        if logging.lastResort is not None:
            logging.lastResort.handle(record)


def quiet_dropped_connections() -> None:
    """Say a dropped database connection in one line, not SQLAlchemy's traceback (idempotent)."""
    log = logging.getLogger("sqlalchemy.pool")
    if not any(isinstance(h, _DroppedConnectionLine) for h in log.handlers):
        log.addHandler(_DroppedConnectionLine())


def open_storage(cfg: StudyConfig, url: str | None = None, *, heartbeat: bool = True
                 ) -> BaseStorage:
    """Optuna's RDB storage with heartbeats: a trial whose worker died is failed and retried."""
    url = url or cfg.storage_url
    check_url(url)
    if storage_kind(url) is not None:  # journal:, grpc: no heartbeats (journal_grpc)
        return open_other_storage(url)
    hb: dict[str, Any] = {}
    if heartbeat:
        hb = dict(
            heartbeat_interval=cfg.heartbeat.interval,
            grace_period=cfg.heartbeat.grace_period,
            heartbeat_stale_trial_callback=Retry(
                max_retry=cfg.heartbeat.max_retry),
        )
    quiet_dropped_connections()
    try:
        return HeartbeatSafeStorage(url, engine_kwargs=engine_kwargs(url), **hb)
    except (SQLAlchemyError, ImportError, ValueError) as e:
        raise storage_error(url, e) from None


def server_answers(url: str) -> bool:
    """Whether the database server at ``url`` takes a new connection now: after a connection it
    dropped (a restart, ``pg_terminate_backend``), another try is worth it; a server that does
    not answer, or refuses this user, is not waited for. False for SQLite and journal files."""
    if storage_kind(url) is not None or url.startswith("sqlite"):
        return False
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    try:
        engine = create_engine(url, poolclass=NullPool,
                               connect_args=engine_kwargs(url).get("connect_args", {}))
    except Exception:
        return False
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


def sqlite_missing(url: str) -> bool:
    if storage_kind(url) is not None:  # a journal file not there yet
        return other_missing(url)
    if not url.startswith("sqlite:///"):
        return False
    try:
        path = make_url(url).database or ""
    except Exception:
        return False
    return path not in ("", ":memory:") and not os.path.exists(path)

