"""Faults of processes and paths: Ctrl-C, dead parents and workers with their reasons recorded,
SQLite paths resolved beside the study file, unwritable outputs refused before any work.

Cheap trials as in ``test_workers`` (``tests/fake_trials``: the training is a sleep)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import make_image_folder
from test_workers import finish, pg_url, states, study_file, tlsearch, trials  # noqa: F401
from tlsearch.cli import main
from tlsearch.search.attrs import ATTR, WORKER_ATTR

FAILURE = ATTR["failure"]


@pytest.fixture
def small_images(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images", per_class=6, size=8)


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            found = predicate()
        except (KeyError, optuna.exceptions.StorageInternalError):
            found = None
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _running(url: str):
    return [t for t in trials(url) if t.state == TrialState.RUNNING
            and ATTR["params"] in t.user_attrs]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(
        f"/proc/{pid}/status").read_text().lower()


def test_ctrl_c_prints_one_line_and_records_interrupted(tmp_path, small_images, monkeypatch, capfd):
    import tlsearch.search.study as st

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(st, "run_trial", interrupted)
    study = study_file(tmp_path, n_trials=2)
    capfd.readouterr()
    assert main(["run", str(study)]) == 130
    err = capfd.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "interrupted: finished trials are saved" in err
    (t,) = trials(f"sqlite:///{tmp_path / 'tiny.db'}")
    assert t.state == TrialState.FAIL and t.user_attrs[FAILURE] == "interrupted"


def test_killed_worker_and_swept_trials_record_why(tmp_path, small_images):
    study = study_file(tmp_path, n_trials=4, heartbeat={"interval": 30, "grace_period": 600})
    url = f"sqlite:///{tmp_path / 'tiny.db'}"
    parent = tlsearch("run", str(study), "--workers", "2", fake=2.0)
    try:
        victim = _wait_for(lambda: _running(url), 120, "a running trial")[0]
        os.kill(int(victim.user_attrs[WORKER_ATTR].split(":")[1]), signal.SIGKILL)
        code, out = finish(parent, timeout=180)
    finally:
        parent.kill()
    assert code == 0, out
    ts = trials(url)
    killed = ts[victim.number]
    assert killed.state == TrialState.FAIL
    assert killed.user_attrs[FAILURE] == "worker died: SIGKILL"
    retry = [t for t in ts if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert FAILURE not in retry[0].user_attrs  # the retry does not inherit the death
    assert states(ts) == {"COMPLETE": 4, "FAIL": 1}

    # a trial left RUNNING by a process that is gone: the single-process rerun says so
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    s = optuna.load_study(study_name="tiny", storage=url)
    orphan = s.ask(ts[0].distributions)
    orphan.set_user_attr(WORKER_ATTR, f"{os.uname().nodename}:{dead.pid}:1")
    code, out = finish(tlsearch("run", str(study), "--n-trials", "5", fake=0.1))
    assert code == 0, out
    assert f"trials [{orphan.number}] were left running by a worker that died" in out
    swept = trials(url)[orphan.number]
    assert swept.state == TrialState.FAIL
    assert swept.user_attrs[FAILURE] == "worker died: swept by this run at start"


def test_workers_end_when_their_parent_is_killed(tmp_path, small_images):
    # a worker killed between creating a trial and marking it as its own leaves it RUNNING until
    # the grace period has passed (then the rerun below sweeps it): keep that period short
    study = study_file(tmp_path, n_trials=6, heartbeat={"interval": 5, "grace_period": 20})
    url = f"sqlite:///{tmp_path / 'tiny.db'}"
    parent = tlsearch("run", str(study), "--workers", "2", fake=3.0)
    try:
        running = _wait_for(lambda: _running(url), 120, "a running trial")
        pids = {int(t.user_attrs[WORKER_ATTR].split(":")[1]) for t in running}
        # every worker, not only those holding a trial now: one may be claiming its next
        kids = Path(f"/proc/{parent.pid}/task/{parent.pid}/children")
        pids |= {int(p) for p in kids.read_text().split()} if kids.exists() else set()
        parent.kill()
        # the workers hold the parent's output pipe open until they end: on a loaded machine
        # that takes longer than the parent's own end
        parent.communicate(timeout=90)
        _wait_for(lambda: not any(_alive(p) for p in pids), 90, "the workers to exit")
    finally:
        parent.kill()
    stopped = [t for t in trials(url) if t.number in {r.number for r in running}]
    assert all(t.state == TrialState.FAIL and t.user_attrs[FAILURE] == "interrupted"
               for t in stopped), [(t.state, t.user_attrs.get(FAILURE)) for t in stopped]
    assert not _running(url)
    code, out = finish(tlsearch("run", str(study), fake=0.05))
    assert code == 0, out
    assert states(trials(url)).get("COMPLETE") == 6


def test_a_parent_whose_last_threads_are_still_ending_is_gone(monkeypatch):
    """Linux sends the parent-death signal when the parent's thread that started the worker ends.
    A parent with more threads (TensorFlow's) is SIGKILLed thread by thread: for a moment the
    worker's parent id is still the parent's, which is a zombie. The worker took it for alive, so
    it stopped without its line (found by the chaos run, benchmarks/chaos_run.py)."""
    from tlsearch.runner.workers import parent_gone

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while Path(f"/proc/{dead.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.time() < deadline, "the process did not end"
        time.sleep(0.05)
    monkeypatch.setenv("TLSEARCH_PARENT_PID", str(dead.pid))
    monkeypatch.setattr(os, "getppid", lambda: dead.pid)  # as the worker of that parent sees it
    assert parent_gone()  # a zombie
    dead.wait()
    assert parent_gone()  # reaped: not there at all
    monkeypatch.setenv("TLSEARCH_PARENT_PID", str(os.getpid()))
    monkeypatch.setattr(os, "getppid", lambda: os.getpid())
    assert not parent_gone()  # alive


def test_the_parent_watch_sends_no_second_sigterm_once_the_run_is_stopping(monkeypatch):
    """The parent-death signal stops the run; once it has unwound, SIGTERM's default action is
    back, and the watch thread's own SIGTERM, a second later, killed the worker silently (exit
    -15, no line). It sends one only while nothing has stopped the run yet."""
    from tlsearch.runner.workers import watch_parent
    from tlsearch.search import deadlines

    sent = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    not_my_parent = os.getppid() + 1
    try:
        deadlines.STOP.set()
        watch_parent(not_my_parent, interval=0.01)
        assert sent == []
        deadlines.STOP.clear()
        watch_parent(not_my_parent, interval=0.01)
        assert sent == [(os.getpid(), signal.SIGTERM)] and deadlines.STOP.is_set()
    finally:
        deadlines.STOP.clear()


def test_a_worker_whose_parent_is_gone_ignores_sigterm_while_it_ends(monkeypatch):
    """Linux sends the parent-death signal again each time the worker is handed on to another of
    the dying parent's threads: a SIGTERM arriving after the run had unwound and SIGTERM's default
    action was back killed the worker silently (exit -15). A worker whose parent is gone keeps
    ignoring it; any other run gives SIGTERM back as it found it."""
    from tlsearch.runner.fleet import interrupt_on_sigterm
    from tlsearch.search import deadlines

    before = signal.getsignal(signal.SIGTERM)
    try:
        monkeypatch.setenv("TLSEARCH_PARENT_PID", str(os.getppid() + 1))  # not the parent: gone
        with interrupt_on_sigterm():
            deadlines.STOP.set()  # the parent-death signal's handler
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        signal.signal(signal.SIGTERM, before)
        with interrupt_on_sigterm():  # no stop asked for: as it was
            pass
        assert signal.getsignal(signal.SIGTERM) == before
        monkeypatch.delenv("TLSEARCH_PARENT_PID")
        with interrupt_on_sigterm():  # not a worker: as it was, stop or not
            deadlines.STOP.set()
        assert signal.getsignal(signal.SIGTERM) == before
    finally:
        signal.signal(signal.SIGTERM, before)
        deadlines.STOP.clear()


def test_a_sigterm_arriving_while_the_first_is_handled_does_not_hang_the_worker(monkeypatch):
    """A worker whose parent was killed gets SIGTERM once per thread of the parent: one landed
    while the handler of the first was inside ``STOP.set()``, whose lock its own thread held, and
    the worker hung for ever (found by the chaos run, benchmarks/chaos_run.py). Here the second
    SIGTERM is delivered inside ``STOP.set()``; a handler that set STOP again would re-enter."""
    import tlsearch.runner.fleet as fleet

    entered: list[str] = []
    handler: list = []

    class SecondSigtermInside(threading.Event):
        def set(self) -> None:
            if "set" in entered:
                entered.append("set again, its lock held: a hang")
                return
            entered.append("set")
            handler[0](signal.SIGTERM, None)  # the second one, tripped before it was ignored
            super().set()

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(fleet, "STOP", SecondSigtermInside())
    try:
        with pytest.raises(KeyboardInterrupt):
            with fleet.interrupt_on_sigterm():
                handler.append(signal.getsignal(signal.SIGTERM))
                handler[0](signal.SIGTERM, None)  # the first one
    finally:
        signal.signal(signal.SIGTERM, before)
    assert entered == ["set"] and fleet.STOP.is_set()


def test_an_interrupt_python_cannot_raise_prints_no_traceback_once_stopping(monkeypatch):
    """A SIGTERM landing in a weakref callback or a ``__del__``: Python cannot raise its
    KeyboardInterrupt there and printed "Exception ignored in ..." with a traceback; the stop
    goes on through STOP. So does a second SIGTERM found once SIGTERM is ignored. Other errors
    there are still reported."""
    from tlsearch.runner.fleet import interrupt_on_sigterm
    from tlsearch.search import deadlines

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda args: seen.append(args.exc_type))

    class Interrupted:
        def __del__(self):
            raise KeyboardInterrupt

    class Broken:
        def __del__(self):
            raise ValueError("a bug")

    try:
        with interrupt_on_sigterm():
            Interrupted()  # before any stop: reported
            deadlines.STOP.set()  # what the SIGTERM handler does first
            Interrupted()
            Broken()
            race = OSError("Signal 15 ignored due to race condition")  # a second SIGTERM
            sys.unraisablehook(type("Args", (), dict(exc_type=OSError, exc_value=race,
                                                     exc_traceback=None, err_msg=None,
                                                     object=None)))
    finally:
        deadlines.STOP.clear()
    assert seen == [KeyboardInterrupt, ValueError]


def test_an_interrupt_at_a_trials_start_is_recorded(tmp_path, monkeypatch, capsys):
    """Interrupted before its training began (its parameters chosen, its start being shown), the
    trial failed with no reason recorded (found by the chaos run, a worker's parent killed)."""
    from tlsearch.search.progress import Progress

    make_image_folder(tmp_path / "images", per_class=6, size=8)
    study = study_file(tmp_path, n_trials=2)

    def interrupted(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(Progress, "trial_start", interrupted)
    assert main(["run", str(study)]) == 130
    got = trials(f"sqlite:///{tmp_path / 'tiny.db'}")
    assert [(t.state, t.user_attrs.get(FAILURE)) for t in got] == [(TrialState.FAIL, "interrupted")]
    assert capsys.readouterr().err.count("interrupted:") == 1


def test_relative_sqlite_lies_beside_the_study_file_whatever_the_folder_name(tmp_path):
    folder = tmp_path / "exp?v=1 a%20b#c"
    make_image_folder(folder / "images", per_class=6, size=8)
    study = study_file(folder, n_trials=1, storage="sqlite:///rel.db")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, out = finish(tlsearch("run", str(study), fake=0.05, cwd=elsewhere))
    assert code == 0, out
    assert (folder / "rel.db").is_file() and not (elsewhere / "rel.db").exists()
    # the default URL, built from the path, is escaped: the database is where the folder says
    study.write_text(study.read_text().replace("storage: sqlite:///rel.db\n", ""))
    code, out = finish(tlsearch("run", str(study), "--n-trials", "2", fake=0.05, cwd=tmp_path))
    assert code == 0, out
    assert (folder / "tiny.db").is_file()
    assert not any(p.suffix == ".db" for p in tmp_path.iterdir())
    code, out = finish(tlsearch("run", str(study), "--n-trials", "2", fake=0.05, cwd=elsewhere))
    assert code == 0 and "2 trials already finished" in out, out


def test_read_only_sqlite_database_is_refused_by_name(tmp_path, small_images, capsys):
    study = study_file(tmp_path, n_trials=2)
    code, out = finish(tlsearch("run", str(study), "--n-trials", "1", fake=0.05))
    assert code == 0, out
    db = tmp_path / "tiny.db"
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here to make the database read-only")
    try:
        capsys.readouterr()
        assert main(["run", str(study)]) == 2
        err = capsys.readouterr().err
        assert f"the SQLite database '{db}' cannot be written" in err, err
        assert "Traceback" not in err
    finally:
        subprocess.run(["chattr", "-i", str(db)])
    assert states(trials(f"sqlite:///{db}")) == {"COMPLETE": 1}


@pytest.mark.parametrize("how", ["full", "read-only"])
def test_an_artifacts_folder_that_takes_no_file_leaves_no_database(tmp_path, small_images, capsys,
                                                                   how):
    """An artifacts folder on a full or read-only file system is refused, naming it, before the
    storage is opened: no database file, no artifacts folder, exit 2 (a small tmpfs, mounted
    here; skipped where mounting is not allowed)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    opts = "size=64k" + (",ro" if how == "read-only" else "")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        if how == "full":
            with open(mnt / "fill", "wb") as f:
                with pytest.raises(OSError):
                    f.write(b"\0" * 200_000)
                    f.flush()
        study = study_file(tmp_path, n_trials=1, artifacts=str(mnt / "arts"))
        capsys.readouterr()
        assert main(["run", str(study)]) == 2
        err = capsys.readouterr().err
        assert f"artifacts folder '{mnt / 'arts'}' cannot be written" in err, err
        assert "Traceback" not in err
        assert not (tmp_path / "tiny.db").exists()  # nothing was written to the storage
        assert not (mnt / "arts").exists()
    finally:
        subprocess.run(["umount", str(mnt)])


def test_predict_out_into_an_unwritable_place_is_refused_before_loading(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = main(["predict", str(tmp_path / "no-model"), str(tmp_path / "x.png"),
                 "--out", str(blocker / "p.tsv")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"--out '{blocker / 'p.tsv'}': cannot write in '{blocker}'" in err, err
    assert "no-model" not in err  # refused before the model was looked for


def _pg_admin(sql: str):
    """Run ``sql`` on the test server on one short-lived connection; its rows."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from test_workers import PG, _pg_connect

    engine = create_engine(PG, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    conn = _pg_connect(engine)
    try:
        return list(conn.execute(text(sql)))
    finally:
        conn.close()
        engine.dispose()


@pytest.mark.postgres
def test_postgres_workers_survive_dropped_connections_with_two_each(tmp_path, small_images,
                                                                     pg_url, monkeypatch):
    """Every connection of the study is terminated mid-run: the workers reconnect and finish at
    exactly n_trials; no process ever holds more than two connections."""
    app = f"tls-{os.getpid()}-{time.time_ns() % 10**9}"
    monkeypatch.setenv("PGAPPNAME", app)  # libpq names this run's connections
    study = study_file(tmp_path, n_trials=8, heartbeat={"interval": 1, "grace_period": 4})
    parent = tlsearch("run", str(study), "--workers", "2", "--storage", pg_url, fake=1.0)
    schema = pg_url.rsplit("%3D", 1)[1]
    most, terminated = 0, False
    try:
        deadline = time.time() + 240
        while parent.poll() is None and time.time() < deadline:
            (n,) = _pg_admin(f"SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                             f"'{app}' AND pid <> pg_backend_pid()")[0]
            most = max(most, n)
            done = _pg_admin(f"SELECT count(*) FROM pg_tables WHERE schemaname = '{schema}' "
                             f"AND tablename = 'trials'")[0][0] and _pg_admin(
                f"SELECT count(*) FROM \"{schema}\".trials WHERE state = 'COMPLETE'")[0][0]
            if not terminated and done >= 2:
                _pg_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                          f"application_name = '{app}' AND pid <> pg_backend_pid()")
                terminated = True
            time.sleep(0.3)
        code, out = finish(parent, timeout=60)
    finally:
        parent.kill()
    assert terminated, out
    assert code == 0, out
    assert "Traceback" not in out, out
    ts = trials(pg_url)
    assert sum(t.state == TrialState.COMPLETE for t in ts) == 8
    assert not any(t.state == TrialState.RUNNING for t in ts)
    assert most <= 2 * 2 + 1, f"{most} connections for 2 workers and their parent"
    print(f"most connections seen for 2 workers + parent: {most}")


def test_a_trial_whose_end_was_lost_with_the_connection_fails_with_that_reason(tmp_path,
                                                                               small_images,
                                                                               monkeypatch,
                                                                               capsys):
    """The connection dropped as a finished trial was told: Optuna raised AssertionError ("Should
    not reach"), the trial stayed RUNNING and, a grace period later, a claim swept it as "worker
    died (no heartbeat)" though its worker was alive (found by the chaos run,
    benchmarks/chaos_run.py). It fails at once, the lost connection its reason, and is queued
    again."""
    import optuna.study._optimize as optimize_module
    from sqlalchemy.exc import OperationalError

    real, calls = optimize_module._tell_with_warning, []

    def tell_lost_once(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("UPDATE trials", {},
                                   Exception("server closed the connection unexpectedly"))
        return real(*a, **k)

    monkeypatch.setattr(optimize_module, "_tell_with_warning", tell_lost_once)
    study = study_file(tmp_path, n_trials=2, heartbeat={"interval": 1, "grace_period": 3})
    assert main(["run", str(study)]) == 0
    ts = trials(f"sqlite:///{tmp_path / 'tiny.db'}")
    assert ts[0].state == TrialState.FAIL
    assert ts[0].user_attrs[FAILURE] == ("lost the database connection: server closed the "
                                         "connection unexpectedly")
    retry = [t for t in ts if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert states(ts) == {"COMPLETE": 2, "FAIL": 1}
    out = capsys.readouterr().out
    assert "trials [0] failed and queued again" in out and "AssertionError" not in out, out


def _run_two_trials(tmp_path, capfd) -> tuple[str, list]:
    """``tlsearch run`` of a 2-trial study, exit 0: what it printed, and the study's trials."""
    study = study_file(tmp_path, n_trials=2)
    capfd.readouterr()
    assert main(["run", str(study)]) == 0
    return "".join(capfd.readouterr()), trials(f"sqlite:///{tmp_path / 'tiny.db'}")


def test_a_connection_lost_as_a_trial_stores_its_weights_fails_it_in_one_line(tmp_path,
                                                                              small_images,
                                                                              monkeypatch, capfd):
    """A connection dropped after the training, as the trial recorded its weights: the error
    was not the trial's failure but a bug's, and Optuna printed its traceback (found by the chaos
    test in a full run of this file). The trial fails with the lost connection as its reason."""
    from sqlalchemy.exc import OperationalError

    import tlsearch.search.study as study_module

    real, calls = study_module.upload_weights, []

    def lost_once(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("INSERT INTO trial_user_attributes", {},
                                   Exception("terminating connection due to administrator "
                                             "command"))
        return real(*a, **k)

    monkeypatch.setattr(study_module, "upload_weights", lost_once)
    shown, ts = _run_two_trials(tmp_path, capfd)
    assert "Traceback" not in shown, shown
    assert ts[0].state == TrialState.FAIL
    assert ts[0].user_attrs[FAILURE] == ("lost the database connection: terminating connection "
                                         "due to administrator command")
    assert states(ts) == {"COMPLETE": 2, "FAIL": 1}


@pytest.mark.parametrize("when", ["training", "told"])
def test_a_trial_swept_while_its_worker_lives_is_dropped_in_one_line(tmp_path, small_images,
                                                                     monkeypatch, capfd, when):
    """A worker whose heartbeat came late (a loaded machine, a lost connection) had its trial
    swept as dead by another while it still trained; its next write to the trial raised Optuna's
    UpdateFinishedTrialError and the worker printed two tracebacks (found by the chaos run,
    benchmarks/chaos_run.py). Its result is dropped with one line and it carries on: the sweep's
    reason stands and the retry runs."""
    import optuna.study._optimize as optimize_module

    from tlsearch.optuna_adapter import fail_running_trial
    from tlsearch.runner.stale import Retry
    from tlsearch.search.progress import Progress

    url = f"sqlite:///{tmp_path / 'tiny.db'}"
    reason = "worker died (no heartbeat): swept by worker 9"
    swept: list[int] = []

    def sweep_from_elsewhere():
        if swept:
            return
        study = optuna.load_study(study_name=None, storage=url)
        running = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
        fail_running_trial(study, running[0], {FAILURE: reason})
        Retry(max_retry=1)(study, study.get_trials(deepcopy=False)[running[0].number])
        swept.append(running[0].number)

    if when == "training":
        real_epoch = Progress.epoch

        def epoch(self, rec):
            real_epoch(self, rec)
            sweep_from_elsewhere()

        monkeypatch.setattr(Progress, "epoch", epoch)
    else:
        real_tell = optimize_module._tell_with_warning

        def tell(*a, **k):
            sweep_from_elsewhere()
            return real_tell(*a, **k)

        monkeypatch.setattr(optimize_module, "_tell_with_warning", tell)
    shown, ts = _run_two_trials(tmp_path, capfd)
    assert "Traceback" not in shown and "UpdateFinishedTrialError" not in shown, shown
    assert "trial 0 was failed elsewhere while this worker ran it" in shown, shown
    assert (ts[0].state, ts[0].user_attrs[FAILURE]) == (TrialState.FAIL, reason)
    retry = [t for t in ts if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert states(ts) == {"COMPLETE": 2, "FAIL": 1}


def test_a_connection_dropped_while_the_study_opens_is_opened_again(tmp_path, small_images,
                                                                     monkeypatch):
    """Every connection of a study terminated while a process was still opening it: the process
    exited 2 ("storage: cannot open ...: terminating connection due to administrator command"),
    or printed a traceback reading the finished trials (found by the chaos test on a busy
    machine). While the server answers new connections the study is opened again, and a study
    whose creation was cut short is completed; a server that does not answer is named at once.
    (Simulated on SQLite: the dropped connection is raised where PostgreSQL's would be.)"""
    from sqlalchemy.exc import OperationalError

    import tlsearch.runner.prepare as prepare_module
    from tlsearch.config import load_config
    from tlsearch.errors import StorageError

    dropped = OperationalError("SELECT", {}, Exception("terminating connection due to "
                                                      "administrator command"))
    cfg = load_config(study_file(tmp_path, n_trials=2))
    real_load, real_get, real_set = (optuna.load_study, optuna.Study.get_trials,
                                     optuna.Study.set_user_attr)
    cuts = {"load": 0, "get": 0, "set": 0}

    def cut(what, real):
        def call(*a, **k):
            if cuts[what] == 1:
                cuts[what] = 0
                raise dropped
            cuts[what] = max(0, cuts[what] - 1)
            return real(*a, **k)
        return call

    monkeypatch.setattr(optuna, "load_study", cut("load", real_load))
    monkeypatch.setattr(optuna.Study, "get_trials", cut("get", real_get))
    monkeypatch.setattr(optuna.Study, "set_user_attr", cut("set", real_set))
    monkeypatch.setattr(prepare_module, "server_answers", lambda url: True)
    monkeypatch.setattr(prepare_module, "RETRY_DELAYS", (0.01, 0.01, 0.01))

    # the first read of the storage, and the first count of finished trials
    cuts.update(load=1, get=1)
    prepared = prepare_module.prepare(cfg, storage_url=f"sqlite:///{tmp_path / 'a.db'}",
                                      warn=lambda *a: None)
    assert prepared.finished == 0 and cuts == {"load": 0, "get": 0, "set": 0}
    # the creation, cut after the third of its attributes: completed on the next try
    cuts.update(set=3)
    prepared = prepare_module.prepare(cfg, storage_url=f"sqlite:///{tmp_path / 'b.db'}",
                                      warn=lambda *a: None)
    assert cuts["set"] == 0
    assert prepared.study.user_attrs == prepared.study_attrs()
    # a server that does not answer: at once, by name
    monkeypatch.setattr(prepare_module, "server_answers", lambda url: False)
    cuts.update(load=1)
    with pytest.raises(StorageError, match="storage: cannot open .*terminating connection"):
        prepare_module.prepare(cfg, storage_url=f"sqlite:///{tmp_path / 'c.db'}",
                               warn=lambda *a: None)


@pytest.mark.slow
@pytest.mark.postgres
def test_chaos_on_one_postgres_study(tmp_path, small_images, pg_url, monkeypatch):
    """4 independent worker processes x 5 trials on one study; one is killed with SIGKILL mid-trial
    and every connection of the study is terminated once; the killed one is started again.
    Exactly 20 finished trials, the killed trial FAIL with its reason and retried, none RUNNING,
    no traceback anywhere. Figures: BENCHMARKS.md."""
    app = f"tls-chaos-{os.getpid()}"
    monkeypatch.setenv("PGAPPNAME", app)
    n = 20
    study = study_file(tmp_path, n_trials=n, heartbeat={"interval": 1, "grace_period": 4})
    t0 = time.time()
    procs = [tlsearch("run", str(study), "--storage", pg_url, fake=1.0) for _ in range(4)]
    outs: list[str] = []
    try:
        victim = _wait_for(lambda: _running(pg_url), 180, "a running trial")[0]
        vpid = int(victim.user_attrs[WORKER_ATTR].split(":")[1])
        killed = next(p for p in procs if p.pid == vpid)
        killed.kill()
        outs.append(killed.communicate()[0])
        procs.remove(killed)
        time.sleep(2)
        _pg_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                  f"application_name = '{app}' AND pid <> pg_backend_pid()")
        procs.append(tlsearch("run", str(study), "--storage", pg_url, fake=1.0))
        codes = []
        for p in procs:
            code, out = finish(p, timeout=400)
            codes.append(code)
            outs.append(out)
    finally:
        for p in procs:
            p.kill()
    seconds = time.time() - t0
    assert codes == [0] * 4, [o[-1500:] for c, o in zip(codes, outs[1:]) if c]
    assert not any("Traceback" in o for o in outs), \
        [o[max(0, o.index("Traceback") - 300):][:4000] for o in outs if "Traceback" in o]
    ts = trials(pg_url)
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in ts) == n
    assert not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in ts)
    dead = ts[victim.number]
    assert dead.state == TrialState.FAIL
    assert dead.user_attrs[FAILURE].startswith("worker died"), dead.user_attrs
    retry = [t for t in ts if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    fails = {t.number: t.user_attrs.get(FAILURE) for t in ts if t.state == TrialState.FAIL}
    print(f"chaos: {n} finished of {len(ts)} trials in {seconds:.0f} s; failed: {fails}")


def test_a_heartbeat_lost_to_the_connection_is_skipped_not_raised(tmp_path, monkeypatch):
    """Optuna beats from a thread: a dropped connection raised there, printed a traceback and
    ended the heartbeat, so the running trial went stale and was retried elsewhere."""
    from optuna.storages import RDBStorage
    from sqlalchemy.exc import OperationalError

    from tlsearch.config import parse_config
    from tlsearch.runner.storage import open_storage

    cfg = parse_config({"name": "hb", "n_trials": 1, "data": {"path": "."},
                        "backbones": ["tiny_cnn"]}, base_dir=tmp_path)
    storage = open_storage(cfg, f"sqlite:///{tmp_path / 'hb.db'}")
    lost = OperationalError("UPDATE trial_heartbeats", {}, Exception("server closed the connection"))
    monkeypatch.setattr(RDBStorage, "record_heartbeat", lambda self, trial_id: (_ for _ in ()).throw(lost))
    storage.record_heartbeat(0)  # skipped
    monkeypatch.setattr(RDBStorage, "record_heartbeat",
                        lambda self, trial_id: (_ for _ in ()).throw(ValueError("a bug")))
    with pytest.raises(ValueError):
        storage.record_heartbeat(0)


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_swept(tmp_path):
    """Killed between creating its trial and its first beat, a worker leaves a RUNNING trial that
    Optuna never calls stale (it has no heartbeat row): every other worker waited for it forever."""
    import datetime

    import optuna

    from tlsearch.config import parse_config
    from tlsearch.runner.stale import sweep_stale_trials
    from tlsearch.runner.storage import open_storage

    cfg = parse_config({"name": "nobeat", "n_trials": 2, "data": {"path": "."},
                        "backbones": ["tiny_cnn"],
                        "heartbeat": {"interval": 1, "grace_period": 2}}, base_dir=tmp_path)
    storage = open_storage(cfg, f"sqlite:///{tmp_path / 'nb.db'}")
    study = optuna.create_study(study_name="nobeat", storage=storage)
    old = optuna.trial.create_trial(state=TrialState.RUNNING, params={}, distributions={})
    old.datetime_start = datetime.datetime.now() - datetime.timedelta(seconds=30)
    fresh = optuna.trial.create_trial(state=TrialState.RUNNING, params={}, distributions={})
    fresh.datetime_start = datetime.datetime.now()
    study.add_trial(old)
    study.add_trial(fresh)
    assert sweep_stale_trials(study, None, "a test") == [0]
    ts = study.get_trials(deepcopy=False)
    assert ts[0].state == TrialState.FAIL
    assert ts[0].user_attrs[FAILURE] == "worker died before its first heartbeat: swept by a test"
    assert ts[1].state == TrialState.RUNNING  # still inside its grace period


def _stopped_at_an_epoch(tmp_path, monkeypatch, epoch) -> list:
    """``tlsearch run`` of a 3-trial study whose epochs end with ``epoch(real, self, rec)``
    (the stop asked for there): exit 130; the trials' (state, reason)."""
    from tlsearch.search import deadlines
    from tlsearch.search.progress import Progress

    make_image_folder(tmp_path / "images", per_class=6, size=8)
    study = study_file(tmp_path, n_trials=3)
    real = Progress.epoch
    monkeypatch.setattr(Progress, "epoch", lambda self, rec: epoch(real, self, rec))
    try:
        assert main(["run", str(study)]) == 130
    finally:
        deadlines.STOP.clear()
    return [(t.state, t.user_attrs.get(FAILURE))
            for t in trials(f"sqlite:///{tmp_path / 'tiny.db'}")]


def test_a_swallowed_interrupt_still_stops_the_run_at_its_next_safe_point(tmp_path, monkeypatch,
                                                                          capsys):
    """SIGTERM raises KeyboardInterrupt, which Python ignores when it lands in a weakref callback
    ("Exception ignored in: <function WeakKeyDictionary...>"): an orphaned worker then went on
    claiming and finishing trials. The stop request outlives the exception: the trial fails as
    interrupted at its next epoch and no other trial starts."""
    from tlsearch.search import deadlines

    def epoch_then_swallowed_sigterm(real, self, rec):
        real(self, rec)
        deadlines.STOP.set()  # what the handler does, its exception lost

    got = _stopped_at_an_epoch(tmp_path, monkeypatch, epoch_then_swallowed_sigterm)
    assert got == [(TrialState.FAIL, "interrupted")]
    assert capsys.readouterr().err.count("interrupted:") == 1


def test_a_stop_that_native_code_returns_as_another_error_is_an_interrupt(tmp_path, monkeypatch,
                                                                         capfd):
    """SIGTERM (a worker's parent killed) raised its KeyboardInterrupt inside TensorFlow's native
    code, which handed it back as ``SystemError: ... returned a result with an exception set``:
    the trial failed with no reason, Optuna printed the traceback and the worker exited 1 without
    its line (found by the chaos run, benchmarks/chaos_run.py). Once the stop is asked for, such an
    error is the interrupt: the trial fails as ``interrupted`` and the run stops with one line."""
    from tlsearch.search import deadlines

    def epoch_then_sigterm_inside_tensorflow(real, self, rec):
        deadlines.STOP.set()  # what the handler does before it raises
        raise SystemError("<built-in method  of PyCapsule object at 0x7f1fc2f28600> returned a "
                          "result with an exception set")

    capfd.readouterr()
    got = _stopped_at_an_epoch(tmp_path, monkeypatch, epoch_then_sigterm_inside_tensorflow)
    assert got == [(TrialState.FAIL, "interrupted")]
    shown = "".join(capfd.readouterr())
    assert "Traceback" not in shown and "SystemError" not in shown, shown
    assert shown.count("interrupted:") == 1, shown


def test_a_dropped_connection_logged_by_the_pool_is_one_line(caplog):
    """SQLAlchemy's pool logs a connection the server dropped with its traceback; once a storage
    is opened the record is one line without it, and other errors keep theirs."""
    import logging

    from sqlalchemy.exc import OperationalError

    from tlsearch.runner.storage import quiet_dropped_connections

    quiet_dropped_connections()
    log = logging.getLogger("sqlalchemy.pool.impl.QueuePool")  # where the pool logs
    with caplog.at_level(logging.ERROR):
        try:
            raise OperationalError("ROLLBACK", {}, Exception("terminating connection due to "
                                                             "administrator command"))
        except OperationalError:
            log.error("Exception during reset or similar", exc_info=True)
        try:
            raise ValueError("something else")
        except ValueError:
            log.error("Exception during reset or similar", exc_info=True)
    dropped, other = caplog.records[-2:]
    assert dropped.exc_info is None and "a database connection was dropped" in dropped.getMessage()
    assert "terminating connection" in dropped.getMessage()
    assert other.exc_info is not None  # not a connection: left as it was


def test_a_connection_lost_inside_optunas_wrapper_is_told_in_the_databases_words():
    """Optuna wraps a commit that failed in StorageInternalError, whose own words ("An exception
    is raised during the commit. This typically happens due to invalid data in the commit, e.g.
    exceeding max length.") became the trial's reason in the chaos run: a user would look for bad
    data. The reason is the database's words for the lost connection."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import OperationalError

    from tlsearch.search.failures import as_trial_failure

    try:
        try:
            raise OperationalError("COMMIT", {}, Exception(
                "terminating connection due to administrator command\nSSL SYSCALL error"))
        except OperationalError as e:
            raise StorageInternalError("An exception is raised during the commit. This typically "
                                       "happens due to invalid data in the commit, e.g. exceeding "
                                       "max length.") from e
    except StorageInternalError as wrapped:
        failure = as_trial_failure(wrapped)
    assert str(failure) == ("lost the database connection: terminating connection due to "
                            "administrator command")
