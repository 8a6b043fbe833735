"""Two storages besides SQLAlchemy's databases: Optuna's journal file and its gRPC storage proxy.

* ``journal:///study.log`` (beside the study file, as a relative SQLite path is) or
  ``journal:////abs/path/study.log``: Optuna's ``JournalStorage`` on a ``JournalFileBackend``, an
  append-only file for one machine without a database server.
* ``grpc://host:port`` (port 13000 when left out): Optuna's ``GrpcStorageProxy``, a client of a
  ``tlsearch storage-proxy`` that serves one database to many workers (:mod:`grpc_proxy`).

Neither records heartbeats in Optuna 5.1, which is what tells a worker that died on another
machine (see :mod:`tlsearch.runner.stale`). What still holds, and what is refused because it
would silently do nothing, is decided here; :mod:`tlsearch.runner.storage`,
:mod:`tlsearch.runner.locks` and :mod:`tlsearch.runner.workers` call in at the few points where
these storages differ from a database.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from tlsearch.errors import StorageError

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage, GrpcStorageProxy

    from tlsearch.config import StudyConfig

__all__ = ["JOURNAL", "GRPC", "GRPC_DEFAULT_PORT", "PROXY_WAIT_S", "storage_kind", "journal_path",
           "grpc_address", "check_other_url", "check_other_storage", "open_other_storage",
           "other_missing", "other_lock_path", "start_note", "no_retry_to_wait_for",
           "dashboard_line", "lost_proxy", "lost_proxy_as_error"]

JOURNAL, GRPC = "journal", "grpc"
#: the port of ``grpc://host`` without one, as Optuna's proxy and ``tlsearch storage-proxy`` use
GRPC_DEFAULT_PORT = 13000
#: seconds a worker waits for a storage proxy to answer before it gives up (as PostgreSQL's
#: connect timeout: a proxy that is down is said at once, not after the data was read)
PROXY_WAIT_S = 10.0

_JOURNAL_FORMS = "journal:///study.log (beside the study file) or journal:////abs/path/study.log"
_SQLITE_HEADER = b"SQLite format 3\x00"


def storage_kind(url: str) -> str | None:
    """``"journal"`` or ``"grpc"`` for the URLs this module opens, else None (a database URL).
    ``grpcs`` is also claimed, to be refused with the reason."""
    scheme = url.split(":", 1)[0].strip().lower() if ":" in url else ""
    return scheme if scheme in (JOURNAL, GRPC, "grpcs") else None


def _shown(url: str) -> str:
    from tlsearch._urls import redact_url

    return redact_url(url)


def journal_path(url: str) -> Path:
    """The journal file a ``journal:`` URL names: relative to the current folder when relative
    (a study file's own ``storage:`` was already placed beside it, see ``config.storage_url``)."""
    from sqlalchemy.engine import make_url

    return Path(make_url(url).database or "").expanduser()


def grpc_address(url: str) -> tuple[str, int]:
    """``(host, port)`` of a ``grpc://`` URL."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return str(u.host), int(u.port or GRPC_DEFAULT_PORT)


def check_other_url(url: str) -> None:
    """Refuse a malformed ``journal:`` or ``grpc:`` URL, saying which forms are expected."""
    from sqlalchemy.engine import make_url

    kind, shown = storage_kind(url), _shown(url)
    if kind == "grpcs":
        raise StorageError(f"storage: {shown!r}: Optuna's gRPC storage proxy speaks plain gRPC "
                           f"only, without TLS; use grpc://host:port inside a trusted network "
                           f"(or through an SSH tunnel)")
    if kind == JOURNAL:
        if not url.lower().startswith("journal:///"):
            raise StorageError(f"storage: {shown!r}: a journal file lies on this machine, so "
                               f"its URL names no host; expected {_JOURNAL_FORMS}")
        u = make_url(url)
        if u.query:
            raise StorageError(f"storage: {shown!r}: a journal URL takes no options "
                               f"(?{'&'.join(u.query)}); expected {_JOURNAL_FORMS}")
        if not u.database or u.database.endswith("/"):
            raise StorageError(f"storage: {shown!r} names no journal file; expected "
                               f"{_JOURNAL_FORMS}")
        return
    expected = f"expected grpc://host:port (the port {GRPC_DEFAULT_PORT} when left out)"
    try:
        u = make_url(url)
    except ValueError:
        raise StorageError(f"storage: {shown!r}: cannot read its port; {expected}, the port a "
                           f"number") from None
    except Exception:
        raise StorageError(f"storage: {shown!r} is not a gRPC URL; {expected}") from None
    if not u.host:
        raise StorageError(f"storage: {shown!r} names no host; {expected}")
    if u.username or u.password:
        raise StorageError(f"storage: {shown!r}: the storage proxy has no login, so its URL "
                           f"carries no user or password; {expected}")
    if u.database or u.query:
        raise StorageError(f"storage: {shown!r}: nothing may follow the port (the proxy serves "
                           f"the one database its `tlsearch storage-proxy --storage` names); "
                           f"{expected}")
    if u.port is not None and not 0 < u.port < 65536:
        raise StorageError(f"storage: {shown!r}: port {u.port} is out of range; {expected}")


def check_other_storage(cfg: StudyConfig, url: str, *, create: bool = True) -> None:
    """Before anything is written: refuse settings these storages cannot honour, a journal that
    cannot be written, and a storage proxy that does not answer. Database URLs pass untouched."""
    kind = storage_kind(url)
    if kind is None:
        return
    set_here = [f for f in ("interval", "grace_period") if f in cfg.heartbeat.model_fields_set]
    if "heartbeat" in cfg.model_fields_set and set_here:
        raise StorageError(
            f"`heartbeat.{set_here[0]}`: the {kind} storage {_shown(url)} records no heartbeats "
            f"(Optuna 5.1), so it would do nothing; remove heartbeat.interval and "
            f"heartbeat.grace_period from the study file, or use a SQLite or PostgreSQL storage "
            f"(heartbeat.max_retry still counts the retries of trials whose worker died on this "
            f"machine)")
    if kind == JOURNAL and create:
        _check_journal_writable(journal_path(url))
    elif kind == JOURNAL:
        _refuse_sqlite_file(journal_path(url))
    elif kind == GRPC:
        _wait_for_proxy(url)


def _refuse_sqlite_file(path: Path) -> None:
    try:
        with path.open("rb") as f:
            header = f.read(len(_SQLITE_HEADER))
    except OSError:
        return
    if header == _SQLITE_HEADER:
        raise StorageError(f"storage: {str(path)!r} is a SQLite database, not a journal file; "
                           f"open it as sqlite:///{path}")


def _check_journal_writable(path: Path) -> None:
    """Refuse, naming it, a journal whose folder is missing or read-only (Optuna writes a lock
    beside the journal, and tlsearch its claim lock), a folder in its place, a read-only journal,
    or a SQLite database given as a journal."""
    from tlsearch.runner.sqlite_probe import check_folder_takes_file

    check_folder_takes_file(path, "journal file", "journal file")
    if path.exists():
        _refuse_sqlite_file(path)
        if not os.access(path, os.W_OK):
            raise StorageError(f"storage: the journal file {str(path)!r} is read-only; make it "
                               f"writable, or copy it and point `storage` at the copy")


def _proxy_client(url: str) -> GrpcStorageProxy:
    """Optuna's client of the proxy at ``url``, without its note that the class is experimental
    (the choice of this storage was the user's; tlsearch states what it lacks instead)."""
    import warnings

    import optuna
    from optuna.storages import GrpcStorageProxy

    host, port = grpc_address(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return GrpcStorageProxy(host=host, port=port)


def _wait_for_proxy(url: str, proxy: GrpcStorageProxy | None = None) -> None:
    """Refuse a proxy that does not answer within :data:`PROXY_WAIT_S`."""
    host, port = grpc_address(url)
    client = proxy if proxy is not None else _proxy_client(url)
    try:
        client.wait_server_ready(timeout=PROXY_WAIT_S)
    except ConnectionError:
        raise StorageError(f"storage: no storage proxy answers at {url} after {PROXY_WAIT_S:g} s; "
                           f"start one there (tlsearch storage-proxy --storage <database URL> "
                           f"--host {host} --port {port}) or check the address") from None
    finally:
        if client is not proxy:
            client.close()


def open_other_storage(url: str) -> BaseStorage:
    """The journal storage or the storage proxy client for ``url`` (checked with
    :func:`check_other_url` first). Neither records heartbeats."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    check_other_url(url)
    if storage_kind(url) == JOURNAL:
        path = journal_path(url)
        _refuse_sqlite_file(path)
        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except (OSError, ValueError) as e:
            raise StorageError(f"storage: cannot open the journal file {str(path)!r} "
                               f"({getattr(e, 'strerror', None) or e})") from None
    proxy = _proxy_client(url)
    _wait_for_proxy(url, proxy)
    return proxy


def other_missing(url: str) -> bool:
    """A journal file that does not exist yet (opening it would create it): nothing to read."""
    return storage_kind(url) == JOURNAL and not journal_path(url).exists()


def other_lock_path(url: str, name: str) -> Path | None:
    """The file the workers of ``name`` on this machine claim trials under: beside the journal
    (every worker of a journal is on this machine, so exact ``n_trials`` holds), or, for a storage
    proxy, in the temporary folder, keyed by the proxy and the study (exact among this machine's
    workers; across machines up to one extra trial per further machine). None for other URLs."""
    kind = storage_kind(url)
    if kind == JOURNAL:
        return Path(f"{journal_path(url)}.tlsearch.lock")
    if kind == GRPC:
        host, port = grpc_address(url)
        key = hashlib.sha256(f"{host}:{port}:{name}".encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"tlsearch-{os.getuid()}-grpc-{key}.lock"
    return None


def start_note(url: str) -> str | None:
    """The one line a run starts with on these storages: what does not hold there."""
    kind = storage_kind(url)
    if kind == JOURNAL:
        return ("note: a journal storage records no heartbeats (Optuna 5.1): a trial whose worker "
                "died is found and retried on this machine only (by its process); keep the journal "
                "on a local disk and its workers on this machine")
    if kind == GRPC:
        return ("note: a gRPC storage records no heartbeats and shares no lock across machines "
                "(Optuna 5.1): a trial whose worker dies on another machine stays RUNNING and is "
                "not retried (`--n-trials` one higher runs another), and workers on several "
                "machines may finish up to one trial more per further machine than n_trials")
    return None


def no_retry_to_wait_for(study: optuna.Study) -> bool:
    """Whether a worker whose study's last trials are running elsewhere should stop rather than
    wait: on a storage without heartbeats a worker's death on another machine is never seen, so
    its trial would never be retried and the wait would never end. Only trials running on this
    machine, whose death its process id tells, are worth waiting for."""
    from optuna.trial import TrialState

    from tlsearch.optuna_adapter import heartbeat_enabled
    from tlsearch.search.attrs import WORKER_ATTR

    if heartbeat_enabled(study):
        return False
    here = f"{socket.gethostname()}:"
    return not any(str(t.user_attrs.get(WORKER_ATTR, "")).startswith(here)
                   for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def dashboard_line(url: str, artifact_dir: Path) -> str | None:
    """The run summary's ``or: optuna-dashboard ...`` line for these storages (None for a
    database URL): optuna-dashboard's own command opens a journal by its path, but no gRPC URL."""
    kind = storage_kind(url)
    if kind == JOURNAL:
        return f"       or: optuna-dashboard '{journal_path(url)}' --artifact-dir '{artifact_dir}'"
    if kind == GRPC:
        return ("       or: optuna-dashboard on the database the storage proxy serves (its own "
                "command opens no grpc:// URL)")
    return None


def lost_proxy(e: BaseException) -> StorageError | None:
    """A :class:`StorageError` saying what to do when ``e`` (or what it arose from) is gRPC's
    UNAVAILABLE: the storage proxy went away while this process used it. None otherwise."""
    if "grpc" not in sys.modules:  # no gRPC storage was opened in this process
        return None
    import grpc

    seen: BaseException | None = e
    while seen is not None:  # Optuna raises its own errors while handling the lost call
        if isinstance(seen, grpc.RpcError) and getattr(seen, "code", lambda: None)() == \
                grpc.StatusCode.UNAVAILABLE:
            details = getattr(seen, "details", lambda: "")() or "unavailable"
            return StorageError(f"storage: lost the storage proxy ({details}); once it answers "
                                f"again, run the same command: the trials this machine's workers "
                                f"left running are failed and retried")
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def lost_proxy_as_error() -> Iterator[None]:
    """Around a command: a storage proxy that went away ends it with one line and exit 2, not
    with the tracebacks of gRPC and Optuna. The process ends, so the trial it left RUNNING is
    found dead by its process id and retried by the next run on this machine."""
    try:
        yield
    except Exception as e:
        lost = lost_proxy(e)
        if lost is None:
            raise
        raise lost from None
