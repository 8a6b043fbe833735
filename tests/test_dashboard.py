"""tlsearch dashboard: the real command serves the study, its trials and their weight files."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import REPO, make_image_folder, write_study
from tlsearch.cli import main


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("dash")
    make_image_folder(root / "images", per_class=8)
    path = write_study(root / "study.yaml", n_trials=2,
                       training={"stage1_epochs": 2, "stage2_epochs": 1})
    assert main(["run", str(path)]) == 0
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def test_dashboard_serves_study_and_artifacts(study):
    from tlsearch.config import load_config
    from tlsearch.runner.prepare import load_study

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "tlsearch.cli", "dashboard", str(study),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/dashboard/" in line, (line, proc.stderr.read()
                                                                if proc.poll() is not None else "")
        base = f"http://127.0.0.1:{port}"
        studies = json.loads(_get(f"{base}/api/studies"))["study_summaries"]
        assert [s["study_name"] for s in studies] == ["tiny"]
        detail = json.loads(_get(f"{base}/api/studies/{studies[0]['study_id']}"))
        trials = detail["trials"]
        assert len(trials) == 2
        stored = {t.number: t.user_attrs["tlsearch.artifact"]
                  for t in load_study(load_config(study)).trials}
        for t in trials:
            assert len(t["artifacts"]) == 1
            art = t["artifacts"][0]
            assert art["artifact_id"] == stored[t["number"]]["id"]
            body = _get(f"{base}/artifacts/{studies[0]['study_id']}/{t['trial_id']}/"
                        f"{art['artifact_id']}")
            assert hashlib.sha256(body).hexdigest() == stored[t["number"]]["sha256"]
        assert b"<html" in _get(f"{base}/dashboard/").lower()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_binds_localhost_by_default_and_reports_a_busy_port(study, capsys):
    from tlsearch.config import load_config
    from tlsearch.dashboard import make_dashboard_server

    server = make_dashboard_server(load_config(study), port=0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["dashboard", str(study), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err


def test_no_study_is_a_clear_error(tmp_path, capsys):
    path = write_study(tmp_path / "none.yaml", name="never-run")
    assert main(["dashboard", str(path), "--port", "0"]) == 2
    assert "tlsearch run" in capsys.readouterr().err
