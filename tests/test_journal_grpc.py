"""Journal files and the gRPC storage proxy as a study's storage: what runs, what is refused.

The worker tests start real ``tlsearch run`` processes with cheap trials (``tests/fake_trials``,
as ``test_workers.py`` does); the journal study that is exported trains for real, on 8x8 images.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import REPO, make_image_folder, write_study
from test_workers import finish, states, tlsearch
from tlsearch.cli import main
from tlsearch.search.attrs import WORKER_ATTR


@pytest.fixture
def small_images(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images", per_class=6, size=8)


def study_file(tmp_path: Path, **overrides) -> Path:
    """The cheapest real study (8x8 images, one epoch per stage), no heartbeat settings."""
    base = dict(data={"path": "images", "validation_split": 0.34, "image_size": 8},
                training={"stage1_epochs": 1, "stage2_epochs": 1, "batch_size": 16})
    base.update(overrides)
    return write_study(tmp_path / "study.yaml", **base)


def journal_trials(path: Path, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(path)))
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


# ------------------------------------------------------------------------------------- journal


def test_a_journal_url_lies_beside_the_study_file(tmp_path):
    from tlsearch.config import parse_config

    raw = {"name": "j", "n_trials": 1, "data": {"path": "x"}, "backbones": ["tiny_cnn"]}
    rel = parse_config({**raw, "storage": "journal:///sub/j.log"}, base_dir=tmp_path)
    assert rel.storage_url == f"journal:///{tmp_path.resolve()}/sub/j.log"
    absolute = parse_config({**raw, "storage": "journal:////var/j.log"}, base_dir=tmp_path)
    assert absolute.storage_url == "journal:////var/j.log"
    odd = parse_config({**raw, "storage": "journal:///a%3Fb.log"}, base_dir=tmp_path / "x?y")
    from tlsearch.runner.journal_grpc import journal_path

    assert journal_path(odd.storage_url) == (tmp_path / "x?y" / "a?b.log").resolve()


def test_a_journal_study_runs_resumes_exports_and_reports(tmp_path, small_images, capsys,
                                                          monkeypatch):
    study = study_file(tmp_path, n_trials=2, storage="journal:///tiny.log")
    monkeypatch.chdir(small_images)  # the relative journal lies beside the study file all the same
    assert main(["run", str(study)]) == 0
    out = capsys.readouterr()
    assert "a journal storage records no heartbeats" in out.out + out.err
    assert f"optuna-dashboard '{tmp_path.resolve() / 'tiny.log'}'" in out.out
    assert states(journal_trials(tmp_path / "tiny.log")) == {"COMPLETE": 2}
    assert not (tmp_path / "tiny.db").exists()
    assert main(["run", str(study), "--n-trials", "3"]) == 0  # resumed: one more
    ts = journal_trials(tmp_path / "tiny.log")
    assert states(ts) == {"COMPLETE": 3} and [t.number for t in ts] == [0, 1, 2]
    capsys.readouterr()
    assert main(["export", str(study), "--out", str(tmp_path / "best"), "--formats", "",
                 "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    best = min(ts, key=lambda t: t.value)
    assert exported["trial"] == best.number and exported["value"] == pytest.approx(best.value)
    assert (tmp_path / "best" / "metadata.json").is_file()
    assert main(["report", str(study), "--out", str(tmp_path / "report.html")]) == 0
    assert "tiny" in (tmp_path / "report.html").read_text()


def test_a_journal_study_in_the_dashboard(tmp_path, small_images):
    from tlsearch.config import load_config
    from tlsearch.dashboard import make_dashboard_server
    from tlsearch.errors import UserError

    study = study_file(tmp_path, n_trials=2, storage="journal:///tiny.log")
    with pytest.raises(UserError, match="run `tlsearch run` first"):
        make_dashboard_server(load_config(study), port=0)
    assert not (tmp_path / "tiny.log").exists()  # reading a missing journal does not create it
    code, out = finish(tlsearch("run", str(study), fake=0.05), timeout=300)
    assert code == 0, out
    server = make_dashboard_server(load_config(study), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=10) as r:
            studies = json.loads(r.read())["study_summaries"]
        assert [s["study_name"] for s in studies] == ["tiny"]
    finally:
        server.shutdown()
        server.server_close()


def test_workers_on_a_journal_stop_at_exactly_n_trials(tmp_path, small_images):
    study = study_file(tmp_path, n_trials=8, storage="journal:///tiny.log")
    code, out = finish(tlsearch("run", str(study), "--workers", "2", fake=0.2), timeout=300)
    assert code == 0, out
    ts = journal_trials(tmp_path / "tiny.log")
    assert states(ts) == {"COMPLETE": 8}
    assert len({t.user_attrs[WORKER_ATTR] for t in ts}) == 2  # both workers took trials
    assert (tmp_path / "tiny.log.tlsearch.lock").exists()  # the claim lock beside the journal
    assert "Traceback" not in out


def test_sweep_and_claims_on_a_journal_use_no_heartbeat_and_no_sql(tmp_path, monkeypatch):
    """A dead local worker's trial is failed and retried by its process id; another machine's
    running trial is left alone, and not waited for: its death would never be seen."""
    from tlsearch.config import parse_config
    from tlsearch.runner import stale as deaths
    from tlsearch.runner.quota import DONE, RUN, WAIT, TrialQuota as Claims
    from tlsearch.runner.storage import open_storage

    def no_sql(*a, **k):
        raise AssertionError("an RDB-only query on a journal storage")

    monkeypatch.setattr(deaths, "has_heartbeat", no_sql)
    url = f"journal:///{tmp_path / 'j.log'}"
    cfg = parse_config({"name": "j", "n_trials": 3, "data": {"path": "x"},
                        "backbones": ["tiny_cnn"]})
    study = optuna.create_study(study_name="j", storage=open_storage(cfg, url))
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = study.ask(dist)
    orphan.set_user_attr(WORKER_ATTR,
                         f"{socket.gethostname()}:{dead.pid}:{deaths._start_ticks(dead.pid)}")
    remote = study.ask(dist)
    remote.set_user_attr(WORKER_ATTR, "another-machine:4242:1")
    claims = Claims(study, url, max_retry=1)
    try:
        assert claims.sweep() == [orphan.number]
        ts = study.get_trials()
        assert [t.state for t in ts] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
        assert ts[2].system_attrs["failed_trial"] == orphan.number
        study.tell(study.ask(), 0.5)  # the retry ran: 1 finished + 1 running elsewhere
        assert claims.next(3) == RUN
        claims.abandon()
        assert claims.next(2) == DONE  # only the remote trial is left: nothing to wait for
        mine = study.ask(dist)  # a live worker of this machine: worth waiting for
        mine.set_user_attr(WORKER_ATTR, deaths.worker_id())
        assert claims.next(3) == WAIT
    finally:
        claims.close()
    assert study.get_trials()[1].state == TrialState.RUNNING  # never failed


# ------------------------------------------------------------------------------------- gRPC


def _start_proxy(db: Path, port: int = 0) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proxy = subprocess.Popen([sys.executable, "-m", "tlsearch.cli", "storage-proxy", "--storage",
                              f"sqlite:///{db}", "--port", str(port)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proxy.stdout.readline()
    if "grpc://" not in line:
        proxy.kill()
        raise AssertionError(line + proxy.stderr.read())
    return proxy, line.split(" at ", 1)[1].split()[0]


def test_a_study_through_the_grpc_proxy_lands_in_its_database(tmp_path, small_images):
    """Two workers through a proxy on a SQLite database: the trials are in that database, and
    exactly n_trials of them (the workers of one machine share a claim lock)."""
    from tlsearch.config import load_config
    from tlsearch.dashboard import make_dashboard_server

    db = tmp_path / "proxied.db"
    proxy, url = _start_proxy(db)
    try:
        assert url.startswith("grpc://127.0.0.1:")
        study = study_file(tmp_path, n_trials=4)
        # trials of 1 s: with 0.2 s the first worker finished all four while the second was
        # still importing TensorFlow on a loaded machine, and "exactly 4" proved nothing
        code, out = finish(tlsearch("run", str(study), "--storage", url, "--workers", "2",
                                    fake=1.0), timeout=300)
        assert code == 0, out
        assert "a gRPC storage records no heartbeats" in out
        assert "opens no grpc:// URL" in out
        ts = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}").trials
        assert states(ts) == {"COMPLETE": 4}
        assert len({t.user_attrs[WORKER_ATTR] for t in ts}) == 2
        assert not (tmp_path / "tiny.db").exists()
        # optuna-dashboard reads the study through the proxy
        server = make_dashboard_server(load_config(study), port=0, url=url)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}"
                                        f"/api/studies", timeout=10) as r:
                summary = json.loads(r.read())["study_summaries"]
            assert [s["study_name"] for s in summary] == ["tiny"]
        finally:
            server.shutdown()
            server.server_close()
    finally:
        proxy.send_signal(signal.SIGTERM)
        rest, err = proxy.communicate(timeout=30)
    assert proxy.returncode == 0, err
    assert rest.strip().splitlines() == [f"storage proxy at {url} stopped"]


def test_a_lost_proxy_is_one_line_not_a_traceback():
    from optuna.storages import GrpcStorageProxy

    from tlsearch.errors import StorageError
    from tlsearch.runner.journal_grpc import lost_proxy_as_error

    gone = GrpcStorageProxy(host="127.0.0.1", port=_free_port())
    with pytest.raises(StorageError, match="lost the storage proxy .*run the same command"):
        with lost_proxy_as_error():
            try:
                gone.get_all_studies()
            except Exception:  # as Optuna does while it handles the failed call
                raise UnboundLocalError("updated_state")
    with pytest.raises(KeyError):  # anything else passes untouched
        with lost_proxy_as_error():
            raise KeyError("x")


@pytest.mark.slow
def test_a_worker_whose_proxy_died_leaves_its_trial_to_the_next_run(tmp_path, small_images):
    """The proxy killed mid-trial: the worker stops with one line; once a proxy serves the
    database again, the next run fails that trial (its process is gone) and retries it."""
    db = tmp_path / "proxied.db"
    proxy, url = _start_proxy(db)
    study = study_file(tmp_path, n_trials=2)
    run = tlsearch("run", str(study), "--storage", url, fake=10)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # until the first trial is training
            with contextlib.suppress(Exception):
                ts = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}").trials
                if ts and "tlsearch.params" in ts[0].user_attrs:
                    break
            time.sleep(0.5)
        proxy.kill()
        proxy.wait()
        code, out = finish(run, timeout=120)
    finally:
        run.kill()
        proxy.kill()
    assert code == 2, out
    assert "error: storage: lost the storage proxy" in out and "Traceback" not in out
    proxy, url = _start_proxy(db, port=int(url.rsplit(":", 1)[1]))
    try:
        code, out = finish(tlsearch("run", str(study), "--storage", url, fake=0.05), timeout=300)
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
    assert code == 0, out
    assert "trials [0] were left running by a worker that died" in out
    ts = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}").trials
    assert states(ts) == {"COMPLETE": 2, "FAIL": 1}
    assert any(t.system_attrs.get("failed_trial") == 0 for t in ts)


def test_the_proxy_refuses_a_busy_port_a_journal_and_no_storage(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TLSEARCH_STORAGE", raising=False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["storage-proxy", "--storage", f"sqlite:///{tmp_path / 'p.db'}", "--port",
                     str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["storage-proxy", "--storage", f"journal:///{tmp_path / 'p.log'}"]) == 2
    assert "does not serve a journal storage" in capsys.readouterr().err
    assert main(["storage-proxy"]) == 2
    assert "expected the database to serve" in capsys.readouterr().err
    assert _files(tmp_path) == set()


# ------------------------------------------------------------------------------------- refused


@pytest.mark.parametrize("url, culprit", [
    ("journal://host/tiny.log", "names no host; expected journal:///study.log"),
    ("journal:///tiny.log?lock=open", "a journal URL takes no options"),
    ("journal:///no/such/folder/tiny.log", "the folder"),
    ("journal:///{images}", "is a folder, not a journal file"),
    ("grpc://127.0.0.1:http", "cannot read its port"),
    ("grpc://user:secret@127.0.0.1:13000", "the storage proxy has no login"),
    ("grpc://127.0.0.1:13000/db", "nothing may follow the port"),
    ("grpc://127.0.0.1:70000", "port 70000 is out of range"),
    ("grpcs://127.0.0.1:13000", "plain gRPC only, without TLS"),
    ("grpc://127.0.0.1:{free}", "no storage proxy answers at grpc://127.0.0.1:"),
])
def test_bad_journal_and_grpc_urls_are_refused_and_nothing_written(
        tmp_path, small_images, capsys, monkeypatch, url, culprit):
    if "{free}" in url:  # nothing listens there: give up after 1 s, not 10
        monkeypatch.setattr("tlsearch.runner.journal_grpc.PROXY_WAIT_S", 1.0)
    study = study_file(tmp_path, n_trials=1)
    before = _files(tmp_path)
    t0 = time.perf_counter()
    assert main(["run", str(study), "--storage",
                 url.format(free=_free_port(), images=small_images)]) == 2
    err = capsys.readouterr().err
    assert culprit in err and "Traceback" not in err and "secret" not in err
    assert time.perf_counter() - t0 < 20
    assert _files(tmp_path) == before


def test_heartbeat_settings_are_refused_where_nothing_records_a_heartbeat(tmp_path, small_images,
                                                                          capsys):
    study = study_file(tmp_path, n_trials=1, storage="journal:///tiny.log",
                       heartbeat={"interval": 5, "grace_period": 20})
    before = _files(tmp_path)
    assert main(["run", str(study)]) == 2
    err = capsys.readouterr().err
    assert "`heartbeat.interval`: the journal storage" in err and "records no heartbeats" in err
    assert _files(tmp_path) == before
    # heartbeat.max_retry still means something there (retries of dead local workers)
    from tlsearch.config import load_config
    from tlsearch.runner.journal_grpc import check_other_storage

    kept = study_file(tmp_path, n_trials=1, storage="journal:///tiny.log",
                      heartbeat={"max_retry": 2})
    check_other_storage(load_config(kept), load_config(kept).storage_url)


def test_a_sqlite_database_given_as_a_journal_is_refused(tmp_path, small_images, capsys):
    db = tmp_path / "tiny.db"
    optuna.create_study(study_name="other", storage=f"sqlite:///{db}")
    study = study_file(tmp_path, n_trials=1, storage="journal:///tiny.db")
    assert main(["run", str(study)]) == 2
    assert "is a SQLite database, not a journal file; open it as sqlite:///" in \
        capsys.readouterr().err
    assert main(["export", str(study), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
