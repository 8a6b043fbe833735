"""Locks held by the whole study, across processes and machines, and retries on lost connections.

A PostgreSQL advisory lock (all machines) or a lock file beside a SQLite database (one machine).
Workers claim trials under it (see :mod:`tlsearch.runner.quota`), and the storage's tables are
created under it once. The PostgreSQL lock is held only around a claim, on a connection borrowed
from the storage's own pool (so a worker holds at most that pool's connections), and a connection
the server dropped (a restart, ``pg_terminate_backend``, an idle timeout) is replaced and the claim
tried again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tlsearch.errors import StorageError, is_connection_error
from tlsearch.runner.storage import engine_kwargs, storage_error
from tlsearch.runner.journal_grpc import other_lock_path

__all__ = ["StudyLock", "study_lock", "retrying", "RETRY_DELAYS"]

T = TypeVar("T")

#: seconds to wait before each new try after a lost connection (about a minute in all: a database
#: restart, a failover)
RETRY_DELAYS = (0.5, 1, 2, 4, 8, 15, 30)


def retrying(fn: Callable[[], T], *, url: str, on_retry: Callable[[], None] = lambda: None,
             delays: tuple[float, ...] = RETRY_DELAYS) -> T:
    """``fn()``, tried again after each lost connection (``on_retry`` runs first), until
    ``delays`` run out: then a :class:`StorageError` naming the storage."""
    for delay in (*delays, None):
        try:
            return fn()
        except Exception as e:
            if not is_connection_error(e):
                raise
            if delay is None:
                raise storage_error(url, e) from None
            on_retry()
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


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
    connection drops, and it blocks nothing but other tlsearch claimants.

    The connection is borrowed (from ``engine``, the storage's pool, when given) for the time the
    lock is held, and returned after: nothing sits idle on the server between claims, where an
    idle timeout or a restart would cut it."""

    def __init__(self, url: str, key: int, engine: Any = None) -> None:
        self.url, self.key = url, key
        self._engine = engine
        self._own_engine = engine is None
        self._conn: Any = None
        #: connected once: a lost connection is retried from then on (a restart, a failover)
        self._connected = engine is not None

    def _get_engine(self) -> Any:
        if self._engine is None:
            try:
                self._engine = create_engine(self.url, **{**engine_kwargs(self.url),
                                                          "pool_size": 1})
            except Exception as e:
                raise storage_error(self.url, e) from None
        return self._engine

    def _drop(self) -> None:
        """Give up the connection; closing it (invalidated) ends the session and its lock."""
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.invalidate()
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _lock(self) -> None:
        self._conn = self._get_engine().connect()
        try:
            self._conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
            self._conn.commit()  # end the transaction: the session lock stays, no snapshot is held
        except BaseException:
            self._drop()
            raise

    def acquire(self) -> None:
        if self._conn is not None:
            return
        if not self._connected:  # a server that never answered: say so now, do not wait
            try:
                self._lock()
            except Exception as e:
                if is_connection_error(e):
                    raise storage_error(self.url, e) from None
                raise
            self._connected = True
            return
        retrying(self._lock, url=self.url)

    def release(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            self._conn.commit()
            self._conn.close()  # back to the pool, unlocked
            self._conn = None
        except Exception:  # the connection is gone, and the lock with it
            self._drop()

    def close(self) -> None:
        self.release()
        if self._own_engine and self._engine is not None:
            self._engine.dispose()
            self._engine = None


def study_lock(url: str, name: str, engine: Any = None) -> StudyLock:
    """The lock for ``name`` (a study, or the storage itself) on the storage at ``url``; on
    PostgreSQL its connections come from ``engine`` when given (the storage's pool)."""
    other = other_lock_path(url, name)  # journal:, grpc: a file on this machine (journal_grpc)
    if other is not None:
        return _FileLock(other)
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
        return _PgAdvisoryLock(url, _lock_key(name), engine)
    return _NoLock()
