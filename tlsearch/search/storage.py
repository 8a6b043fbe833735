"""Where a study lives: database URLs, passwords kept out of every message, storages, and the
locks shared by every process of one storage.

A lock is held by the whole study: a PostgreSQL advisory lock (all machines), or a lock file
beside a SQLite database (one machine). Workers claim trials under it (see
:mod:`tlsearch.search.workers`), and the storage's tables are created under it once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Iterator

from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from tlsearch.config import StudyConfig
from tlsearch.errors import StorageError

__all__ = ["redact_url", "storage_error", "engine_kwargs", "check_url", "open_storage",
           "sqlite_missing", "StudyLock", "study_lock"]


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


def engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
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
    try:
        u = make_url(url)
    except ArgumentError:
        raise StorageError(f"storage: {shown!r} is not a database URL (expected for "
                           f"example sqlite:///study.db or postgresql+psycopg://user@host/db)"
                           ) from None
    except ValueError:
        raise StorageError(f"storage: {shown!r}: cannot read its host and port (expected host, "
                           f"host:5432 or [::1]:5432, the port a number)") from None
    if _loose_at(url) or (u.host and "@" in u.host):
        raise StorageError(f"storage: {shown!r}: the user name or password holds an unencoded "
                           f"'@'; URL-encode it (%40 for @, as for : / ? # % and spaces)")


def open_storage(cfg: StudyConfig, url: str | None = None, *, heartbeat: bool = True) -> RDBStorage:
    """Optuna's RDB storage with heartbeats: a trial whose worker died is failed and retried."""
    url = url or cfg.storage_url
    check_url(url)
    hb: dict[str, Any] = {}
    if heartbeat:
        hb = dict(
            heartbeat_interval=cfg.heartbeat.interval,
            grace_period=cfg.heartbeat.grace_period,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                max_retry=cfg.heartbeat.max_retry),
        )
    try:
        return RDBStorage(url, engine_kwargs=engine_kwargs(url), **hb)
    except (SQLAlchemyError, ImportError, ValueError) as e:
        raise storage_error(url, e) from None


def sqlite_missing(url: str) -> bool:
    if not url.startswith("sqlite:///"):
        return False
    path = url[len("sqlite:///"):]
    return path not in ("", ":memory:") and not os.path.exists(path)


# ------------------------------------------------------------------------------------------------
# Locks held across processes and machines


def _lock_key(name: str) -> int:
    """A signed 64-bit advisory-lock key for ``name``."""
    return int.from_bytes(hashlib.sha256(f"tlsearch:{name}".encode()).digest()[:8], "big",
                          signed=True)


class StudyLock:
    """A re-acquirable lock shared by every worker of a storage. Release is idempotent."""

    def acquire(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def release(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        self.release()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()


class _NoLock(StudyLock):
    """For storages without a shared lock (MySQL): counting may overshoot by up to N-1."""

    def acquire(self) -> None:
        pass

    def release(self) -> None:
        pass


class _FileLock(StudyLock):
    """``flock`` on a file beside the SQLite database: one machine, released when a process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._held = False

    def acquire(self) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._held = True

    def release(self) -> None:
        if self._fd is not None and self._held:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._held = False

    def close(self) -> None:
        self.release()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _PgAdvisoryLock(StudyLock):
    """A PostgreSQL session advisory lock: shared by all machines, released when a worker's
    connection drops, and it blocks nothing but other tlsearch claimants."""

    def __init__(self, url: str, key: int) -> None:
        self.url, self.key = url, key
        self._conn: Any = None
        self._held = False

    def acquire(self) -> None:
        if self._conn is None:
            try:
                engine = create_engine(self.url, isolation_level="AUTOCOMMIT",
                                       **engine_kwargs(self.url))
                self._conn = engine.connect()
            except Exception as e:
                raise storage_error(self.url, e) from None
        self._conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
        self._held = True

    def release(self) -> None:
        if self._conn is not None and self._held:
            self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            self._held = False

    def close(self) -> None:
        self.release()
        if self._conn is not None:
            self._conn.close()
            self._conn.engine.dispose()
            self._conn = None


def study_lock(url: str, name: str) -> StudyLock:
    """The lock for ``name`` (a study, or the storage itself) on the storage at ``url``."""
    try:
        u = make_url(url)
    except Exception:
        raise StorageError("storage: not a database URL") from None
    if u.get_backend_name() == "sqlite":
        db = u.database or ""
        if db in ("", ":memory:"):
            return _NoLock()
        return _FileLock(Path(db + ".tlsearch.lock"))
    if u.get_backend_name() == "postgresql":
        return _PgAdvisoryLock(url, _lock_key(name))
    return _NoLock()


