"""Every use of Optuna's private API, in one module.

tlsearch needs a few things Optuna keeps to itself: the storage behind a study (to fail a trial
whose worker died and to lock on the database's own connections), a trial's and a study's ids in
that storage, which trials Optuna's heartbeat calls stale, whether a trial ever beat, a storage
whose heartbeat thread survives a dropped connection, and a study as a pruner sees it. Each such
use is a function or class here, named after what it gives, with the private name it reads in its
docstring; ``tests/test_optuna_adapter.py`` checks every one of them against the installed Optuna
and fails, naming the attribute, when a release changes it. The ``optuna<6`` pin is the second
guard. No other module of tlsearch names a private Optuna attribute.

Below the search and the runner: both import it, it imports neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Container, Iterable

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

from tlsearch.errors import is_connection_error

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = ["study_storage", "storage_engine", "trial_id", "study_id", "heartbeat_interval",
           "grace_period", "stale_trial_ids", "has_heartbeat", "fail_running_trial",
           "HeartbeatSafeStorage", "StudyView", "HEARTBEAT_TABLE", "heartbeat_enabled",
           "serve_storage_proxy"]

#: the table Optuna's RDB storage keeps heartbeats in (one row per trial that has beaten)
HEARTBEAT_TABLE = "trial_heartbeats"


def study_storage(study: optuna.Study) -> BaseStorage:
    """The storage a study reads and writes (``Study._storage``: Optuna wraps an RDB storage in
    its ``_CachedStorage``)."""
    return study._storage


def _backend(storage: BaseStorage) -> BaseStorage:
    """The storage inside Optuna's cache wrapper (``_CachedStorage._backend``), else itself."""
    return getattr(storage, "_backend", storage)


def storage_engine(study: optuna.Study) -> Engine | None:
    """The SQLAlchemy engine of a study's RDB storage (``_CachedStorage._backend.engine``); None
    for other storages. The study lock borrows its connections from this pool."""
    return getattr(_backend(study_storage(study)), "engine", None)


def trial_id(trial: FrozenTrial) -> int:
    """A trial's id in its storage (``FrozenTrial._trial_id``), what storage calls take."""
    return trial._trial_id


def study_id(study: optuna.Study) -> int:
    """A study's id in its storage (``Study._study_id``)."""
    return study._study_id


def heartbeat_interval(study: optuna.Study) -> int | None:
    """Seconds between a running trial's heartbeats; None where the storage records none
    (``BaseHeartbeat.get_heartbeat_interval``, on storages that have it)."""
    get = getattr(study_storage(study), "get_heartbeat_interval", None)
    return get() if get is not None else None


def heartbeat_enabled(study: optuna.Study) -> bool:
    """Whether the study's storage records heartbeats (``optuna.storages._heartbeat.
    is_heartbeat_enabled``, on the storage or the one inside Optuna's cache wrapper): journal and
    gRPC storages record none, so a worker's death on another machine goes unseen there."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    storage = study_storage(study)
    return bool(is_heartbeat_enabled(_backend(storage)) or is_heartbeat_enabled(storage))


def serve_storage_proxy(storage: BaseStorage, server: object) -> None:
    """Add Optuna's gRPC storage service for ``storage`` to a ``grpc.Server`` (its servicer
    ``optuna.storages._grpc.servicer.OptunaStorageProxyService`` and the generated
    ``api_pb2_grpc.add_StorageServiceServicer_to_server``): ``run_grpc_proxy_server`` does the
    same and then serves, and cannot say which port it bound or that binding failed."""
    from optuna.storages._grpc.auto_generated.api_pb2_grpc import (
        add_StorageServiceServicer_to_server)
    from optuna.storages._grpc.servicer import OptunaStorageProxyService

    add_StorageServiceServicer_to_server(OptunaStorageProxyService(storage), server)


def grace_period(study: optuna.Study) -> float | None:
    """Seconds without a heartbeat after which Optuna calls a running trial stale
    (``RDBStorage.grace_period``, or twice the interval when unset); None without heartbeats."""
    interval = heartbeat_interval(study)
    if not interval:
        return None
    return getattr(_backend(study_storage(study)), "grace_period", None) or 2 * interval


def stale_trial_ids(study: optuna.Study) -> set[int]:
    """The storage ids of the study's RUNNING trials whose heartbeat is older than the grace
    period (``_get_stale_trial_ids(study_id)``); empty where the storage records no heartbeat."""
    storage = study_storage(study)
    backend = _backend(storage)
    get_stale = backend.stale_ids if isinstance(backend, HeartbeatSafeStorage) else \
        getattr(storage, "_get_stale_trial_ids", None)
    if get_stale is None or not heartbeat_interval(study):
        return set()
    return set(get_stale(study_id(study)))


def has_heartbeat(study: optuna.Study, trial_id: int) -> bool:
    """Whether the study's RDB storage holds a heartbeat row for the trial (raw SQL on Optuna's
    :data:`HEARTBEAT_TABLE`; Optuna offers no query for it). True when it cannot tell, so that a
    trial of unknown standing is left alone."""
    engine = storage_engine(study)
    if engine is None:
        return True
    try:
        from sqlalchemy import text

        with engine.connect() as conn:
            row = conn.execute(text(f"SELECT 1 FROM {HEARTBEAT_TABLE} WHERE trial_id = :t"),
                               {"t": trial_id}).first()
        return row is not None
    except Exception:
        return True


def fail_running_trial(study: optuna.Study, trial: FrozenTrial,
                       user_attrs: dict[str, object]) -> FrozenTrial | None:
    """Set ``user_attrs`` on a RUNNING trial of another process and mark it FAIL, through the
    storage (a :class:`FrozenTrial` has no ``tell``). Returns the failed trial as stored, or None
    when it had ended meanwhile (another worker got there first)."""
    storage = study_storage(study)
    tid = trial_id(trial)
    try:
        for key, value in user_attrs.items():
            storage.set_trial_user_attr(tid, key, value)
        if not storage.set_trial_state_values(tid, state=TrialState.FAIL):
            return None
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    return storage.get_trial(tid)


class HeartbeatSafeStorage(RDBStorage):
    """Optuna's RDB storage whose heartbeat survives a lost connection.

    Optuna records a running trial's heartbeat from a thread (``record_heartbeat``, called by its
    ``_heartbeat`` machinery); a database connection dropped under it (a server restart,
    ``pg_terminate_backend``, an idle timeout) raised there, printed a traceback and ended the
    heartbeat, so the trial went stale while it trained and another worker failed and retried it.
    A beat lost to the connection is skipped instead: the pool replaces the dead connection and
    the next beat, well inside the grace period, goes through.
    """

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception as e:
            if not is_connection_error(e):
                raise

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """None, as Optuna's own sweep sees it: Optuna fails stale trials before every trial
        (``_run_trial`` calls ``fail_stale_trials``) with no reason recorded; tlsearch's sweep
        (:mod:`tlsearch.runner.stale`) fails them instead, each with its reason, and reads them
        through :meth:`stale_ids`."""
        return []

    def stale_ids(self, study_id: int) -> list[int]:
        """The ids of the study's RUNNING trials silent for longer than the grace period."""
        return RDBStorage._get_stale_trial_ids(self, study_id)


class StudyView:
    """A study as a pruner sees it: its trials through ``view`` (a function of the trial list),
    everything else the study's own.

    Optuna's pruners read trials through ``get_trials``, ``trials`` or the private
    ``_get_trials(deepcopy, states, use_cache)`` (what its samplers call, and Hyperband's bracket
    studies); all three answer the view. Not an :class:`optuna.Study`: a subclass would have to
    call its private constructor."""

    def __init__(self, study: optuna.Study,
                 view: Callable[[list[FrozenTrial]], Iterable[FrozenTrial]]) -> None:
        self._study = study
        self._view = view

    def get_trials(self, deepcopy: bool = True,
                   states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return list(self._view(self._study.get_trials(deepcopy=False, states=states)))

    def _get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        return self.get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()

    def __getattr__(self, name: str) -> object:
        return getattr(self._study, name)

