"""The LogME ranking benchmark keeps working: its tiny version runs and reports every figure.

The numbers of a tiny run mean nothing (60 images, 2 epochs); BENCHMARKS.md has a real run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.timeout(300)
def test_tiny_logme_ranking_reports_scores_accuracies_and_tau(tmp_path, bench_env):
    env = bench_env
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "logme_ranking.py"), "--tiny",
                        "--out", str(tmp_path)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert [row["backbone"] for row in res["rows"]] == ["efficientnet_lite0", "efficientnet_lite0_random"]
    for row in res["rows"]:
        assert row["feature_dim"] == 1280 and row["logme_converged"]
        assert 0.0 <= row["head_accuracy"] <= 1.0 and 0.0 <= row["finetune_accuracy"] <= 1.0
        assert row["logme_seconds"] > 0 and row["head_seconds"] > 0
    tau = res["summary"]["kendall_tau"]["all"]["head_accuracy"]
    assert tau["n"] == 2 and "tau" in tau
    assert "| candidates |" in (tmp_path / "results.md").read_text()
