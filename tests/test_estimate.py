"""The cost estimate: `tlsearch validate --estimate` and the line `tlsearch run` starts with."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest

from tlsearch.cli import main
from tlsearch.config import load_config
from tlsearch.search.estimate import estimate, reachable_depths
from tlsearch.search.estimate_text import estimate_line, format_estimate

from conftest import REPO, write_study


def test_reachable_depths_capped_and_all(tmp_path, image_folder):
    cfg = load_config(write_study(tmp_path / "s.yaml",
                                  search={"unfreeze_blocks": [0, 1, 5, "all"]}))
    assert reachable_depths(cfg, 2) == [0, 1, 2, "all"]
    cfg = load_config(write_study(tmp_path / "s.yaml", training={"stage2_epochs": 0}))
    assert reachable_depths(cfg, 2) == [0]


def test_validate_estimate_prints_a_row_per_depth(tiny_study, capsys):
    text = tiny_study.read_text().replace("n_trials: 3", "n_trials: 3\ntimeout: 60")
    tiny_study.write_text(text)
    assert main(["validate", "--estimate", str(tiny_study)]) == 0
    out = capsys.readouterr().out
    assert "frozen features once per study" in out
    rows = {}
    for line in out.splitlines():
        m = re.match(r"\s+tiny_cnn\s+(\d+)\s+([\d.]+) s\s+([\d.]+) s\s+([\d.]+) s", line)
        if m:
            rows[int(m.group(1))] = float(m.group(4))
    assert sorted(rows) == [0, 1, 2]
    assert all(math.isfinite(v) and v > 0 for v in rows.values())
    assert "timeout 60 s: about" in out


def test_estimate_rows_grow_with_depth_and_interpolate(tiny_study):
    cfg = load_config(tiny_study)
    est = estimate(cfg, batches=2)
    by_depth = {r.depth: r for r in est.rows}
    assert set(by_depth) == {0, 1, 2}
    assert all(r.timed for r in est.rows)
    assert by_depth[0].stage2_s == 0.0 and by_depth[2].stage2_s > 0
    assert est.features_s["tiny_cnn"] > 0
    assert est.n_train + est.n_val == 36
    # two depths timed: the middle one lies between its neighbours
    est = estimate(cfg, batches=1, depths=2)
    mid = next(r for r in est.rows if r.depth == 1)
    assert not mid.timed
    assert "~ interpolated" in "\n".join(format_estimate(est))
    assert estimate_line(est).startswith("estimate: features ")
    # more batches asked for than the data has (27 examples, batches of 8): a short last batch
    est = estimate(cfg, batches=10, depths=2)
    assert all(math.isfinite(r.trial_s) and r.trial_s > 0 for r in est.rows)


def _run(*args: str) -> str:
    """``tlsearch run`` in a fresh process (the estimate on), what it printed on both streams."""
    env = {k: v for k, v in os.environ.items() if k != "TLSEARCH_NO_ESTIMATE"}
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run([sys.executable, "-m", "tlsearch.cli", "run", *args], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout + r.stderr


def test_run_starts_with_the_estimate_unless_told_not_to(tiny_study):
    tiny_study.write_text(tiny_study.read_text().replace("n_trials: 3", "n_trials: 1"))
    said = _run(str(tiny_study))
    assert re.search(r"estimate: features [\d.]+ s, a trial [\d.]+ s", said), said
    # resuming a study that has trials: no estimate
    assert "estimate:" not in _run(str(tiny_study), "--n-trials", "2")
    # a new study, told not to, or with nothing to say
    fresh = write_study(tiny_study.parent / "fresh.yaml", name="fresh", n_trials=1)
    assert "estimate:" not in _run(str(fresh), "--no-estimate")
    quiet = write_study(tiny_study.parent / "quiet.yaml", name="quiet", n_trials=1)
    assert "estimate:" not in _run(str(quiet), "--quiet")


@pytest.mark.parametrize("bad", ["1", "0"])
def test_estimate_depths_must_be_two_or_more(tiny_study, capsys, bad):
    assert main(["validate", "--estimate", "--estimate-depths", bad, str(tiny_study)]) == 2
    assert "--estimate-depths" in capsys.readouterr().err


def test_estimate_text_study(tmp_path):
    from test_text import _snippets

    _snippets(48).to_csv(tmp_path / "reviews.csv", index=False)
    cfg = load_config(write_study(
        tmp_path / "text.yaml", data={"path": "reviews.csv", "image_size": 32},
        backbones=["tiny_bert"], training={"stage1_epochs": 1, "stage2_epochs": 1,
                                           "batch_size": 12},
        search={"unfreeze_blocks": {"low": 0, "high": 2}, "head_width": [8],
                "max_length": [16, 24]}))
    est = estimate(cfg, batches=2)
    assert [r.depth for r in est.rows] == [0, 1, 2]
    assert all(math.isfinite(r.trial_s) and r.trial_s > 0 for r in est.rows)
    assert est.rows[2].stage2_s > 0 and est.features_s["tiny_bert"] > 0
