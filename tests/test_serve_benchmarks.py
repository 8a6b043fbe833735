"""The scripts behind BENCHMARKS.md's serving section run end to end on a tiny study's export."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, make_image_folder, write_study

pytest.importorskip("uvicorn", reason="tlsearch serve needs the `serve` extra")


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    from tlsearch.cli import main

    root = tmp_path_factory.mktemp("bench-export")
    make_image_folder(root / "images", per_class=6)
    study = write_study(root / "study.yaml", n_trials=1, search={"unfreeze_blocks": 1,
                                                                 "head_width": [8]})
    assert main(["run", str(study)]) == 0
    assert main(["export", str(study), "--out", str(root / "export"), "--formats", ""]) == 0
    return root


@pytest.mark.slow  # a tiny study, then three fresh processes that import TensorFlow
def test_predict_throughput_and_serve_load_report_every_figure(tiny_export, tmp_path, bench_env):
    export, images = tiny_export / "export", tiny_export / "images"
    out = tmp_path / "throughput.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "predict_throughput.py"),
                        "--export", str(export), "--images", str(images), "--repeats", "1",
                        "--batch-size", "8", "--out", str(out)],
                       capture_output=True, text=True, env=bench_env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["images"] == 18 and len(got["median_images_per_s"]) >= 3
    assert all(v > 0 for v in got["median_images_per_s"].values())
    assert got["cli"][0]["images"] == 18 and got["cli_startup_s_median"] > 0

    out = tmp_path / "load.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "serve_load.py"),
                        "--export", str(export), "--requests", "40", "--concurrency", "4",
                        "--repeats", "2", "--out", str(out)],
                       capture_output=True, text=True, env=bench_env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["requests"] == 40 and got["errors"] == 0
    assert got["latency_ms"]["p50"] <= got["latency_ms"]["p99"]
    assert got["batching"]["requests"] == 40
    assert got["bad_requests"]["served_after"] and max(got["bad_requests"]["statuses"]) < 500
    assert got["rss_mb"]["peak"] > 0 and len(got["requests_per_s_vs_plain_loop"]) == 2
    assert all(v > 0 for v in got["plain_loop"]["batches_of_64_images_per_s"])
