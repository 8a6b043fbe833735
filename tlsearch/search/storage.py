"""Where a study lives: database URLs, passwords kept out of every message, storages, and the
locks shared by every process of one storage.

The locks shared by the processes of one storage live in :mod:`tlsearch.search.locks`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from optuna.storages import BaseStorage, RDBStorage
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (ArgumentError, DBAPIError, InterfaceError, NoSuchModuleError,
                            OperationalError, SQLAlchemyError)

from tlsearch.config import StudyConfig
from tlsearch.errors import StorageError
from tlsearch.search.deaths import Retry
from tlsearch.search.journal_grpc import (check_other_url, open_other_storage, other_missing,
                                          storage_kind)

__all__ = ["redact_url", "storage_error", "engine_kwargs", "check_url", "open_storage",
           "sqlite_missing", "PG_POOL_SIZE"]


#: query parameters of a database URL that carry a password (libpq and drivers accept them)
_SECRET_QUERY_KEYS = {"password", "passwd", "pwd", "sslpassword", "passfile_password"}


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, for messages and logs."""
    if _loose_at(url):  # an unencoded '@' in the password: mask all up to the last '@'
        scheme, rest = url.split("://", 1)
        user = re.split(r"[:@]", rest, maxsplit=1)[0]
        return f"{scheme}://{user}:***@{rest.split('?', 1)[0].rsplit('@', 1)[1]}"
    try:
        u = make_url(url)
        secret = {k: "***" for k in u.query if k.lower() in _SECRET_QUERY_KEYS}
        shown = u.update_query_dict(secret).render_as_string(hide_password=True)
        return shown.replace("%2A%2A%2A", "***")
    except Exception:
        # not a URL SQLAlchemy reads, but it may still carry a password: mask user:password@
        return re.sub(r"^([^:]*://[^:/@]*:).*@", r"\1***@", url)


def _loose_at(url: str) -> bool:
    """True when the part before the query holds two '@' or more: one of them is in a user name
    or password, not URL-encoded, and where the password ends cannot be told."""
    return "://" in url and url.split("://", 1)[1].split("?", 1)[0].count("@") > 1


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
    if storage_kind(url) is not None:  # journal:, grpc: (tlsearch.search.journal_grpc)
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
    if _loose_at(url) or (u.host and "@" in u.host):
        raise StorageError(f"storage: {shown!r}: the user name or password holds an unencoded "
                           f"'@'; URL-encode it (%40 for @, as for : / ? # % and spaces)")


def is_connection_error(e: BaseException) -> bool:
    """True for a database connection that was lost or refused, which a new one may cure."""
    seen: BaseException | None = e
    while seen is not None:  # Optuna wraps SQLAlchemy's errors (StorageInternalError)
        if isinstance(seen, DBAPIError):
            return bool(seen.connection_invalidated) or isinstance(
                seen, (OperationalError, InterfaceError))
        seen = seen.__cause__ or seen.__context__
    return False



class _Storage(RDBStorage):
    """Optuna's RDB storage whose heartbeat survives a lost connection.

    Optuna records a running trial's heartbeat from a thread; a database connection dropped under
    it (a server restart, ``pg_terminate_backend``, an idle timeout) raised there, printed a
    traceback and ended the heartbeat, so the trial went stale while it trained and another worker
    failed and retried it. A beat lost to the connection is skipped instead: the pool replaces the
    dead connection and the next beat, well inside the grace period, goes through.
    """

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception as e:
            if not is_connection_error(e):
                raise


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
    try:
        return _Storage(url, engine_kwargs=engine_kwargs(url), **hb)
    except (SQLAlchemyError, ImportError, ValueError) as e:
        raise storage_error(url, e) from None


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

