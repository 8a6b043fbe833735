"""Many workers, dead workers and failing trials: the study ends with exactly n_trials, loses nothing.

Most tests start real ``tlsearch run`` processes with cheap trials (``tests/fake_trials``: the
training is replaced by a sleep, everything else is the real command), so that 4 workers x 25
trials take seconds on two cores. ``test_real_workers_end_to_end`` trains for real.

The PostgreSQL tests use a fresh schema on ``$TLSEARCH_TEST_PG`` (default: the server on
127.0.0.1:5432, database ``test``) and skip, saying so, when none answers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import REPO, make_image_folder, write_study
from tlsearch.cli import main
from tlsearch.search.attrs import WORKER_ATTR

FAKE = Path(__file__).resolve().parent / "fake_trials"
PG = os.environ.get("TLSEARCH_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_connect(engine, tries: int = 6):
    """A connection, or a skip saying why: no server, or a server too busy for one more client
    (other jobs share it: "too many clients" is retried for a while first)."""
    from sqlalchemy.exc import OperationalError

    for i in range(tries):
        try:
            return engine.connect()
        except OperationalError as e:
            reason = str(e.orig).splitlines()[0] if e.orig else str(e)
            if "too many clients" in reason and i < tries - 1:
                time.sleep(2 * (i + 1))
                continue
            engine.dispose()
            if "too many clients" in reason:
                pytest.skip(f"PostgreSQL at {PG} is too busy (too many clients) after {tries} "
                            f"tries; try again later")
            pytest.skip(f"PostgreSQL does not answer at {PG} (set $TLSEARCH_TEST_PG): {reason}")


@pytest.fixture
def pg_url():
    """A URL whose tables live in a fresh schema, dropped afterwards."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    engine = create_engine(PG, connect_args={"connect_timeout": 3}, isolation_level="AUTOCOMMIT",
                           poolclass=NullPool)
    conn = _pg_connect(engine)
    schema = f"tls_{uuid.uuid4().hex[:12]}"
    conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    conn.close()  # not held through the test: the server is shared
    try:
        yield f"{PG}?options=-csearch_path%3D{schema}"
    finally:
        conn = _pg_connect(engine)
        conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        conn.close()
        engine.dispose()


@pytest.fixture
def small_images(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images", per_class=6, size=8)


def study_file(tmp_path: Path, **overrides) -> Path:
    """The cheapest real study: 8x8 images, one epoch per stage."""
    base = dict(data={"path": "images", "validation_split": 0.34, "image_size": 8},
                training={"stage1_epochs": 1, "stage2_epochs": 1, "batch_size": 16},
                heartbeat={"interval": 1, "grace_period": 3})
    base.update(overrides)
    return write_study(tmp_path / "study.yaml", **base)


def tlsearch(*args: str, fake: float | None = None, python: str | None = None,
             **popen) -> subprocess.Popen:
    """``tlsearch ARGS`` in a new process that imports this tree (and the fake trials, if asked);
    with ``python``, that code instead, ARGS in its ``sys.argv``."""
    env = dict(os.environ)
    path = [str(REPO)] + ([str(FAKE)] if fake is not None else [])
    # sitecustomize is looked up on sys.path in order: the fake one must come first
    path.sort(key=lambda p: p != str(FAKE))
    env["PYTHONPATH"] = os.pathsep.join(path + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("TLSEARCH_STORAGE", None)
    if fake is not None:
        env["TLSEARCH_TEST_FAKE_TRIAL"] = str(fake)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    command = ["-c", python] if python is not None else ["-m", "tlsearch.cli"]
    return subprocess.Popen([sys.executable, *command, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finish(p: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out + err


def trials(url: str, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def states(ts) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in ts:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


# ------------------------------------------------------------------------------------------------
# many workers, exactly n_trials


@pytest.mark.postgres
def test_four_workers_hundred_trials_on_postgres(tmp_path, small_images, pg_url):
    study = study_file(tmp_path, n_trials=100)
    code, out = finish(tlsearch("run", str(study), "--workers", "4", "--storage", pg_url,
                                fake=0.05), timeout=300)
    assert code == 0, out
    ts = trials(pg_url)
    assert states(ts) == {"COMPLETE": 100}
    assert sorted(t.number for t in ts) == list(range(100))
    workers = {t.user_attrs[WORKER_ATTR] for t in ts}
    assert len(workers) >= 2, "the trials were not shared between the workers"
    # each trial proposed its own parameters: the workers did not repeat each other
    assert len({tuple(sorted(t.params.items())) for t in ts}) == 100


def test_workers_on_sqlite_stop_at_exactly_n_trials(tmp_path, small_images):
    study = study_file(tmp_path, n_trials=12)
    code, out = finish(tlsearch("run", str(study), "--workers", "4", fake=0.2))
    assert code == 0, out
    ts = trials(f"sqlite:///{tmp_path / 'tiny.db'}")
    assert states(ts) == {"COMPLETE": 12}
    # a second run has nothing to do, and --n-trials raises the target for the whole study
    code, out = finish(tlsearch("run", str(study), "--workers", "2", "--n-trials", "15", fake=0.2))
    assert code == 0, out
    assert states(trials(f"sqlite:///{tmp_path / 'tiny.db'}")) == {"COMPLETE": 15}


def test_python_api_runs_two_workers_to_exactly_n_trials(tmp_path, small_images):
    """``tlsearch.run(path, workers=2)`` is ``tlsearch run path --workers 2``: two processes share
    the trials, the study ends with exactly n_trials finished, and the study is returned."""
    study = study_file(tmp_path, n_trials=6)
    code = ("import os, sys, tlsearch; s = tlsearch.run(sys.argv[1], workers=2, quiet=True); "
            "print('returned', type(s).__name__, len(s.trials), 'from', os.getpid())")
    p = tlsearch(str(study), fake=0.2, python=code)
    rc, out = finish(p)
    assert rc == 0, out
    assert "returned Study 6 from " in out, out
    parent = out.split("returned Study 6 from ")[1].split()[0]
    ts = trials(f"sqlite:///{tmp_path / 'tiny.db'}")
    assert states(ts) == {"COMPLETE": 6}
    ran_in = {t.user_attrs[WORKER_ATTR].split(":")[1] for t in ts}  # host:pid:start
    assert parent not in ran_in and 1 <= len(ran_in) <= 2, (parent, ran_in)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_workers_started_at_once_on_a_fresh_storage(tmp_path, small_images, backend, request):
    """Trap 5: 4 processes creating one fresh storage at the same moment; none may crash."""
    url = (request.getfixturevalue("pg_url") if backend == "postgres"
           else f"sqlite:///{tmp_path / 'fresh.db'}")
    study = study_file(tmp_path, n_trials=8)
    procs = [tlsearch("run", str(study), "--storage", url, fake=0.2) for _ in range(4)]
    results = [finish(p) for p in procs]
    for code, out in results:
        assert code == 0, out
        assert "Traceback" not in out
    assert states(trials(url)) == {"COMPLETE": 8}


# ------------------------------------------------------------------------------------------------
# dead workers


def _running_trial_of_a_worker(url: str, deadline: float) -> optuna.trial.FrozenTrial:
    while time.time() < deadline:
        try:
            for t in trials(url):
                # started training: its parameters are all chosen
                if t.state == TrialState.RUNNING and "tlsearch.params" in t.user_attrs:
                    return t
        except KeyError:
            pass
        time.sleep(0.2)
    raise AssertionError("no trial started")


@pytest.mark.postgres
def test_worker_killed_mid_trial_is_failed_and_retried(tmp_path, small_images, pg_url):
    study = study_file(tmp_path, n_trials=10)
    parent = tlsearch("run", str(study), "--workers", "3", "--storage", pg_url, fake=1.5)
    try:
        victim = _running_trial_of_a_worker(pg_url, time.time() + 60)
        pid = int(victim.user_attrs[WORKER_ATTR].split(":")[1])
        os.kill(pid, signal.SIGKILL)
        code, out = finish(parent, timeout=180)
    finally:
        parent.kill()
    assert code == 0, out
    assert "SIGKILL" in out  # the parent says which worker died
    ts = trials(pg_url)
    assert states(ts).get("COMPLETE") == 10
    killed = next(t for t in ts if t.number == victim.number)
    assert killed.state == TrialState.FAIL
    retries = [t for t in ts if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == victim.params


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_heartbeat_fails_a_trial_whose_machine_went_silent(tmp_path, backend, request):
    """A worker on another machine cannot be asked whether it lives: its heartbeat stops, and
    after the grace period the next claim fails its trial and queues the retry."""
    from tlsearch.config import parse_config
    from tlsearch.runner.storage import open_storage
    from tlsearch.runner.quota import RUN, TrialQuota

    url = (request.getfixturevalue("pg_url") if backend == "postgres"
           else f"sqlite:///{tmp_path / 'hb.db'}")
    cfg = parse_config({"name": "hb", "n_trials": 5, "data": {"path": "x"}, "backbones": ["tiny_cnn"],
                        "heartbeat": {"interval": 1, "grace_period": 2, "max_retry": 1}})
    storage = open_storage(cfg, url)
    study = optuna.create_study(study_name="hb", storage=storage)
    lost = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    lost.set_user_attr(WORKER_ATTR, "another-machine:4242:1")
    storage.record_heartbeat(lost._trial_id)
    claims = TrialQuota(study, url, max_retry=1)
    try:
        assert claims.next(5) == RUN  # 0 finished + 1 running < 5; nothing is stale yet
        claims.abandon()
        assert study.get_trials()[0].state == TrialState.RUNNING
        time.sleep(3.5)
        assert claims.next(5) == RUN
        claims.abandon()
    finally:
        claims.close()
    ts = study.get_trials()
    assert [t.state for t in ts] == [TrialState.FAIL, TrialState.WAITING]
    assert ts[1].params == ts[0].params and ts[1].system_attrs["failed_trial"] == 0


def test_trial_of_a_dead_local_worker_is_swept_at_start(tmp_path, small_images):
    """One machine: a trial left RUNNING by a process that no longer exists is failed at once
    (no grace period to wait out), retried, and the study resumes to its target."""
    study = study_file(tmp_path, n_trials=3, heartbeat={"interval": 30, "grace_period": 600})
    url = f"sqlite:///{tmp_path / 'tiny.db'}"
    code, out = finish(tlsearch("run", str(study), "--n-trials", "1", fake=0.1))
    assert code == 0, out
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from tlsearch.runner.stale import _start_ticks

    s = optuna.load_study(study_name="tiny", storage=url)
    done = s.get_trials()[0]
    orphan = s.ask(done.distributions)
    orphan.set_user_attr(WORKER_ATTR, f"{os.uname().nodename}:{dead.pid}:{_start_ticks(dead.pid)}")
    code, out = finish(tlsearch("run", str(study), "--workers", "2", fake=0.1))
    assert code == 0, out
    assert "left running by a worker that died" in out
    ts = trials(url)
    assert ts[orphan.number].state == TrialState.FAIL
    assert states(ts) == {"COMPLETE": 3, "FAIL": 1}
    assert any(t.system_attrs.get("failed_trial") == orphan.number for t in ts)


# ------------------------------------------------------------------------------------------------
# storages that cannot be used


@pytest.mark.parametrize("url, culprit", [
    ("postgresql+psycopg://user:secret@127.0.0.1:1/db", "cannot open postgresql+psycopg://user:***@127.0.0.1:1/db"),
    ("not a url at all", "is not a database URL"),
    ("postgresql+nosuchdriver://u:secret@127.0.0.1/db",
     "SQLAlchemy knows no database 'postgresql+nosuchdriver'"),
])
def test_unusable_storage_exits_fast_with_a_clear_message(tmp_path, small_images, url, culprit):
    study = study_file(tmp_path, n_trials=2)
    t0 = time.perf_counter()
    code, out = finish(tlsearch("run", str(study), "--storage", url, "--workers", "2"), timeout=60)
    assert time.perf_counter() - t0 < 30  # PostgreSQL connect timeout is 10 s, plus start-up
    assert code == 2, out
    assert culprit in out
    assert "Traceback" not in out and "secret" not in out
    assert not (tmp_path / "tiny.db").exists()


# ------------------------------------------------------------------------------------------------
# the real thing


def test_real_workers_end_to_end(tmp_path, small_images):
    """Real training in 2 worker processes (TensorFlow imported in each): 4 trials, no more."""
    study = study_file(tmp_path, n_trials=4)
    code, out = finish(tlsearch("run", str(study), "--workers", "2"), timeout=400)
    assert code == 0, out
    assert "study tiny: 4 trials (4 complete)" in out
    ts = trials(f"sqlite:///{tmp_path / 'tiny.db'}")
    assert states(ts) == {"COMPLETE": 4}
    assert all(t.user_attrs.get("tlsearch.artifact") for t in ts)


# ------------------------------------------------------------------------------------------------
# trials that fail: that trial fails, the worker goes on; several in a row stop the study


def _failing_pipeline(monkeypatch, fail_numbers: set[int] | None, error_for):
    """Wrap the real pipeline so the trials numbered in ``fail_numbers`` (all, if None) raise."""
    import tlsearch.search.study as st

    real = st.run_trial
    calls = {"n": 0}

    def run_trial(params, schedule, data, source, on_epoch=None, on_stage=None, **kwargs):
        n = calls["n"]
        calls["n"] += 1
        if fail_numbers is None or n in fail_numbers:
            raise error_for(n)
        return real(params, schedule, data, source, on_epoch, on_stage, **kwargs)

    monkeypatch.setattr(st, "run_trial", run_trial)


def _tf_errors():
    import tensorflow as tf

    from tlsearch.errors import NonFiniteLoss

    return [
        lambda n: NonFiniteLoss(f"the loss became nan at step 0 (stage 1)"),
        lambda n: tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor"),
        lambda n: tf.errors.InvalidArgumentError(None, None, "corrupt batch: cannot decode"),
    ]


def test_failing_trials_fail_alone_and_the_study_goes_on(tmp_path, small_images, monkeypatch,
                                                         capsys):
    errors = _tf_errors()
    _failing_pipeline(monkeypatch, {0, 2, 4}, lambda n: errors[n // 2](n))
    study = study_file(tmp_path, n_trials=3)
    assert main(["run", str(study)]) == 0
    ts = trials(f"sqlite:///{tmp_path / 'tiny.db'}")
    assert states(ts) == {"COMPLETE": 3, "FAIL": 3}
    reasons = [t.user_attrs["tlsearch.failure"] for t in ts if t.state == TrialState.FAIL]
    assert "nan" in reasons[0]
    assert reasons[1].startswith("out of memory") and "batch_size" in reasons[1]
    assert "corrupt batch" in reasons[2]


def test_consecutive_failures_stop_the_study_with_a_clear_message(tmp_path, small_images,
                                                                  monkeypatch, capsys):
    errors = _tf_errors()
    _failing_pipeline(monkeypatch, None, lambda n: errors[1](n))
    study = study_file(tmp_path, n_trials=5, training={"stage1_epochs": 1, "stage2_epochs": 1,
                                                       "batch_size": 16,
                                                       "max_consecutive_failures": 2})
    assert main(["run", str(study)]) == 1
    err = capsys.readouterr().err
    assert "2 trials failed in a row; the study was stopped" in err
    assert "out of memory" in err and "Traceback" not in err
    assert states(trials(f"sqlite:///{tmp_path / 'tiny.db'}")) == {"FAIL": 2}


# ------------------------------------------------------------------------------------------------
# recycled workers, one GPU each


def test_recycled_workers_finish_the_study_without_losing_a_trial(tmp_path, small_images):
    study = study_file(tmp_path, n_trials=5)
    code, out = finish(tlsearch("run", str(study), "--recycle-after", "2", fake=0.1), timeout=300)
    assert code == 0, out
    assert "replaced by a fresh process after 2 trials" in out
    ts = trials(f"sqlite:///{tmp_path / 'tiny.db'}")
    assert states(ts) == {"COMPLETE": 5}
    pids = [t.user_attrs[WORKER_ATTR].split(":")[1] for t in sorted(ts, key=lambda t: t.number)]
    assert len(set(pids)) == 3 and pids[0] == pids[1] and pids[2] == pids[3] != pids[0]


class _Proc:
    def __init__(self, code):
        self.code = code

    def poll(self):
        return self.code


def test_wait_recycling_restarts_only_recycled_workers_and_not_when_stopping():
    from tlsearch.runner.workers import RECYCLE, wait_recycling

    later = {0: [_Proc(RECYCLE), _Proc(0)], 1: []}
    started = []

    def start(i):
        started.append(i)
        return later[i].pop(0)

    procs = [_Proc(RECYCLE), _Proc(3)]
    assert wait_recycling(procs, start, poll=0) == [0, 3]
    assert started == [0, 0]
    assert wait_recycling([_Proc(RECYCLE)], start, stopping=lambda: True, poll=0) == [RECYCLE]


def test_each_worker_gets_its_own_gpu_and_none_on_a_cpu(monkeypatch):
    from tlsearch.runner.workers import device_env, visible_gpus

    assert device_env(0, []) == {}
    assert [device_env(i, ["0", "3"])["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["0", "3", "0"]
    assert device_env(1, ["0", "3"])["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 5")
    assert visible_gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == []


def test_the_workers_memory_plan(monkeypatch):
    """On a 24 GB machine with a 400 MB starting process, 8 workers start (the chaos run's 8
    tiny-twin workers); 1,000 are refused with how many fit; --allow-oversubscribe starts them
    with a warning."""
    import psutil

    from tlsearch.errors import UserError
    from tlsearch.runner.workers import worker_memory_plan

    class Mem:
        available = 24 * 2**30

    class Proc:
        def memory_info(self):
            return type("I", (), {"rss": 400 * 2**20})()

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Mem())
    monkeypatch.setattr(psutil, "Process", Proc)
    assert worker_memory_plan(8) is None
    with pytest.raises(UserError, match=r"`--workers 1000`: about 1000 x 1.0 GB = 1,000 GB .* "
                                        r"24.0 GB available: use at most 24 workers here"):
        worker_memory_plan(1000)
    assert worker_memory_plan(1000, allow=True).startswith("warning: `--workers 1000`")
