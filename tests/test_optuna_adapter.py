"""Every private Optuna name tlsearch uses, checked against the installed Optuna.

Each function of :mod:`tlsearch.optuna_adapter` reads something Optuna keeps to itself; each test
here fails, naming that attribute, when a release changes it, so an upgrade breaks this file and
not a study that is running. Seconds in all: SQLite files and in-memory studies, no training.
"""

from __future__ import annotations

import datetime
import inspect
import time

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from tlsearch import optuna_adapter as oa

X = {"x": FloatDistribution(0, 1)}


@pytest.fixture
def rdb(tmp_path):
    """A study on Optuna's RDB storage with heartbeats, as ``tlsearch run`` opens it."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = oa.HeartbeatSafeStorage(f"sqlite:///{tmp_path / 'a.db'}", heartbeat_interval=1,
                                          grace_period=2)
    return optuna.create_study(study_name="a", storage=storage)


def test_study_has_its_storage_as__storage(rdb):
    assert hasattr(rdb, "_storage"), "optuna.Study no longer has `_storage`"
    storage = oa.study_storage(rdb)
    assert isinstance(storage, optuna.storages.BaseStorage), \
        f"Study._storage is a {type(storage).__name__}, not an optuna BaseStorage"


def test_the_rdb_storage_is_reached_through__backend_and_has_an_engine(rdb):
    wrapper = oa.study_storage(rdb)
    assert hasattr(wrapper, "_backend"), \
        f"Optuna's {type(wrapper).__name__} no longer wraps the RDB storage as `_backend`"
    assert isinstance(wrapper._backend, oa.HeartbeatSafeStorage), \
        "`_CachedStorage._backend` is not the RDBStorage the study was given"
    engine = oa.storage_engine(rdb)
    from sqlalchemy.engine import Engine

    assert isinstance(engine, Engine), "RDBStorage.engine is no longer a SQLAlchemy Engine"
    assert oa.storage_engine(optuna.create_study()) is None  # in memory: no engine, no lock


def test_frozen_trials_and_studies_carry__trial_id_and__study_id(rdb):
    trial = rdb.ask(X)
    frozen = rdb.get_trials(deepcopy=False)[0]
    assert hasattr(frozen, "_trial_id"), "FrozenTrial no longer has `_trial_id`"
    assert oa.trial_id(frozen) == trial._trial_id, "FrozenTrial._trial_id is not the trial's id"
    assert hasattr(rdb, "_study_id"), "optuna.Study no longer has `_study_id`"
    assert oa.study_storage(rdb).get_study_id_from_name("a") == oa.study_id(rdb), \
        "Study._study_id is not the id the storage knows the study by"


def test_heartbeat_interval_and_grace_period_are_read_from_the_storage(rdb, tmp_path):
    backend = oa.study_storage(rdb)._backend
    assert hasattr(backend, "grace_period"), "RDBStorage no longer has `grace_period`"
    assert hasattr(backend, "get_heartbeat_interval"), \
        "RDBStorage no longer has `get_heartbeat_interval()`"
    assert oa.heartbeat_interval(rdb) == 1 and oa.grace_period(rdb) == 2
    plain = optuna.create_study(storage=f"sqlite:///{tmp_path / 'b.db'}")
    assert oa.heartbeat_interval(plain) is None and oa.grace_period(plain) is None


def test__get_stale_trial_ids_takes_a_study_id_and_names_silent_trials(rdb):
    wrapper = oa.study_storage(rdb)
    assert hasattr(wrapper, "_get_stale_trial_ids"), \
        "Optuna's storage no longer has `_get_stale_trial_ids`"
    params = list(inspect.signature(wrapper._backend._get_stale_trial_ids).parameters)
    assert params == ["study_id"], f"RDBStorage._get_stale_trial_ids now takes {params}"
    silent = rdb.ask(X)
    wrapper.record_heartbeat(silent._trial_id)
    assert oa.stale_trial_ids(rdb) == set()
    time.sleep(3.5)  # past the grace period of 2 s (SQLite stamps whole seconds)
    assert oa.stale_trial_ids(rdb) == {silent._trial_id}, \
        "_get_stale_trial_ids(study_id) did not name a trial silent for longer than grace_period"


def test_optunas_own_sweep_before_each_trial_leaves_stale_trials_to_tlsearchs(rdb):
    """Optuna fails stale trials itself before every trial (``_run_trial`` calls
    ``fail_stale_trials``, which reads ``_get_stale_trial_ids``), with no reason recorded: a killed
    worker's trial ended FAIL with nothing to say why. tlsearch's sweep alone fails them, each
    with its reason."""
    from tlsearch.runner.stale import sweep_stale_trials

    silent = rdb.ask(X)
    oa.study_storage(rdb).record_heartbeat(silent._trial_id)
    time.sleep(3.5)  # past the grace period of 2 s
    rdb.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    left = rdb.get_trials(deepcopy=False)[silent.number]
    assert left.state == TrialState.RUNNING, \
        f"Optuna's sweep before a trial failed the stale trial (reason: " \
        f"{left.user_attrs.get('tlsearch.failure')!r})"
    assert oa.stale_trial_ids(rdb) == {silent._trial_id}
    assert sweep_stale_trials(rdb, None, "a test") == [silent.number]
    failed = rdb.get_trials(deepcopy=False)[silent.number]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["tlsearch.failure"] == "worker died (no heartbeat): swept by a test"


def test_trial_heartbeats_table_holds_a_row_once_a_trial_has_beaten(rdb):
    beaten, silent = rdb.ask(X), rdb.ask(X)
    oa.study_storage(rdb).record_heartbeat(beaten._trial_id)
    from sqlalchemy import inspect as sa_inspect

    tables = sa_inspect(oa.storage_engine(rdb)).get_table_names()
    assert oa.HEARTBEAT_TABLE in tables, \
        f"Optuna's RDB schema has no `{oa.HEARTBEAT_TABLE}` table any more: {tables}"
    assert oa.has_heartbeat(rdb, beaten._trial_id), \
        f"no `{oa.HEARTBEAT_TABLE}` row with trial_id after record_heartbeat"
    assert not oa.has_heartbeat(rdb, silent._trial_id)


def test_a_running_trial_of_another_process_is_failed_through_the_storage(rdb):
    victim = rdb.ask(X)
    frozen = rdb.get_trials(deepcopy=False)[0]
    failed = oa.fail_running_trial(rdb, frozen, {"tlsearch.failure": "worker died"})
    assert isinstance(failed, FrozenTrial) and failed.state == TrialState.FAIL, \
        "storage.set_trial_state_values(trial_id, state=FAIL) no longer fails the trial"
    assert failed.user_attrs["tlsearch.failure"] == "worker died"
    assert failed.number == victim.number
    # a trial that ended meanwhile: Optuna raises UpdateFinishedTrialError, read as "not failed"
    assert oa.fail_running_trial(rdb, frozen, {"tlsearch.failure": "again"}) is None


def test_the_heartbeat_thread_calls_record_heartbeat_which_the_storage_overrides(rdb):
    assert "record_heartbeat" in vars(optuna.storages.RDBStorage), \
        "RDBStorage no longer defines record_heartbeat, which HeartbeatSafeStorage overrides"
    from optuna.storages import _heartbeat

    source = inspect.getsource(_heartbeat)
    assert "record_heartbeat(" in source, \
        "Optuna's heartbeat thread no longer calls storage.record_heartbeat"


def _trial(number: int, values: dict[int, float], state=TrialState.COMPLETE) -> FrozenTrial:
    t = optuna.trial.create_trial(state=state, value=min(values.values()) if
                                  state == TrialState.COMPLETE else None,
                                  intermediate_values=values, params={}, distributions={})
    t.number = number
    return t


@pytest.mark.parametrize("pruner", [
    optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
    optuna.pruners.PercentilePruner(75.0, n_startup_trials=1, n_warmup_steps=0),
], ids=["median", "percentile"])
def test_pruners_read_trials_only_through_what_the_study_view_answers(pruner):
    """A pruner handed a :class:`StudyView` must judge by the view's trials: what it decides is
    what it decides on a study holding only those trials. Optuna reading trials another way
    (its storage, a new private method) would judge the hidden ones, and this fails."""
    assert list(inspect.signature(optuna.Study._get_trials).parameters)[1:] == [
        "deepcopy", "states", "use_cache"], "Study._get_trials(deepcopy, states, use_cache) changed"
    good = [_trial(i, {0: 0.1, 1: 0.1, 2: 0.1}) for i in range(3)]
    hidden = [_trial(i, {0: 9.0, 1: 9.0, 2: 9.0}) for i in range(3, 9)]  # would make 1.0 look good
    running = _trial(9, {0: 1.0, 1: 1.0, 2: 1.0}, TrialState.RUNNING)

    def decide(trials: list[FrozenTrial], view: bool) -> bool:
        study = optuna.create_study(pruner=pruner)
        for t in trials:
            study.add_trial(t)
        me = study.ask(X)
        for step, v in running.intermediate_values.items():
            me.report(v, step)
        frozen = study.get_trials(deepcopy=False)[-1]
        judged = oa.StudyView(study, lambda ts: [t for t in ts if t.number not in range(3, 9)]) \
            if view else study
        return bool(pruner.prune(judged, frozen))  # type: ignore[arg-type]

    shown = decide(good + hidden, view=True)
    assert shown == decide(good, view=False), \
        f"{type(pruner).__name__} read trials the StudyView hides"
    assert shown != decide(good + hidden, view=False), "the hidden trials should change the answer"


def test_a_study_view_answers_the_three_ways_trials_are_read():
    study = optuna.create_study()
    for i in range(4):
        study.add_trial(_trial(i, {0: float(i)}))
    view = oa.StudyView(study, lambda ts: [t for t in ts if t.number % 2 == 0])
    assert [t.number for t in view.get_trials()] == [0, 2]
    assert [t.number for t in view.trials] == [0, 2]
    read = view._get_trials(deepcopy=False, states=None, use_cache=True)
    assert [t.number for t in read] == [0, 2]
    assert view.direction == study.direction and view.study_name == study.study_name


def test_no_other_module_names_a_private_optuna_attribute():
    """The adapter is the one place: a grep over tlsearch/ for the private names it wraps."""
    import re

    from conftest import REPO

    private = re.compile(r"\._(storage|backend|trial_id|study_id|get_stale_trial_ids|get_trials|"
                         r"heartbeat)\b|trial_heartbeats|\bRDBStorage\)")
    hits = [f"{p.relative_to(REPO)}:{n}: {line.strip()}"
            for p in sorted((REPO / "tlsearch").rglob("*.py")) if p.name != "optuna_adapter.py"
            for n, line in enumerate(p.read_text().splitlines(), 1) if private.search(line)]
    assert not hits, "\n".join(hits)


def test_a_trial_started_before_now_has_its_start_on_the_local_clock(rdb):
    """The never-beaten check compares ``datetime_start`` with ``datetime.now()`` (naive, local):
    Optuna stamps trials on that clock."""
    rdb.ask(X)
    start = rdb.get_trials(deepcopy=False)[0].datetime_start
    assert start is not None and start.tzinfo is None, "datetime_start is no longer naive"
    assert abs((datetime.datetime.now() - start).total_seconds()) < 60


def test_heartbeat_enabled_tells_rdb_from_journal_storage(rdb, tmp_path):
    """``optuna.storages._heartbeat.is_heartbeat_enabled`` says a heartbeat storage records beats
    and a journal file records none (the workers' rule for waiting at the end of a study)."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    try:
        from optuna.storages._heartbeat import is_heartbeat_enabled  # noqa: F401
    except ImportError as e:  # pragma: no cover - an Optuna release moved it
        pytest.fail(f"optuna.storages._heartbeat.is_heartbeat_enabled is gone: {e}")
    assert oa.heartbeat_enabled(rdb), "is_heartbeat_enabled no longer sees the RDB storage's beats"
    journal = optuna.create_study(storage=JournalStorage(JournalFileBackend(
        str(tmp_path / "j.log"))))
    assert not oa.heartbeat_enabled(journal)


def test_the_grpc_proxy_service_is_added_to_a_server(tmp_path):
    """``optuna.storages._grpc.servicer.OptunaStorageProxyService`` and the generated
    ``add_StorageServiceServicer_to_server`` still serve a storage through a gRPC server, which a
    ``GrpcStorageProxy`` client reads."""
    import grpc
    from concurrent.futures import ThreadPoolExecutor

    from optuna.storages import GrpcStorageProxy, RDBStorage, get_storage

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")
    try:
        oa.serve_storage_proxy(get_storage(RDBStorage(f"sqlite:///{tmp_path / 'p.db'}")), server)
    except ImportError as e:  # pragma: no cover - an Optuna release moved them
        pytest.fail(f"Optuna's gRPC servicer or its generated code moved: {e}")
    server.start()
    try:
        proxy = GrpcStorageProxy(host="127.0.0.1", port=port)
        study = optuna.create_study(study_name="p", storage=proxy)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        assert len(study.trials) == 2
        proxy.close()
    finally:
        server.stop(None)
