"""The benchmark scripts keep working: their tiny version runs and reports every figure.

This checks the scripts, not the speed: the numbers of a tiny run mean nothing (see BENCHMARKS.md
for the real runs).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from tests.conftest import REPO

PEER_FIGURES = {"best_val_accuracy_mean", "trials_finished_mean", "seconds_per_stage1_trial",
                "test_accuracy_mean", "test_accuracy_se"}
TLSEARCH_FIGURES = {"study_seconds", "forward_seconds", "pure_training_seconds", "floor_seconds",
                    "study_over_floor", "overhead_per_trial_mean", "overhead_per_trial_median"}
TARGETS = {"stage1_trial_speedup_vs_plain_optuna", "tlsearch_test_accuracy",
           "test_accuracy_ahead_of_peers_by_2se",
           "study_time_over_floor", "rss_growth_mb"}


@pytest.mark.timeout(600)
def test_tiny_benchmark_reports_every_figure(tmp_path, bench_env):
    env = bench_env
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_benchmark.py"), "--tiny",
                        "--out", str(tmp_path)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    f = json.loads((tmp_path / "results.json").read_text())["figures"]
    assert set(f["peers"]) == {"plain_optuna", "keras_tuner", "tlsearch"}
    for peer, figures in f["peers"].items():
        assert PEER_FIGURES <= set(figures), peer
        assert figures["trials_finished_mean"] == 2, peer
        assert figures["best_val_accuracy_mean"] is not None and figures["seconds_per_stage1_trial"] > 0
        # each peer's chosen model judged on the held-out test images
        assert 0.0 <= figures["test_accuracy_mean"] <= 1.0, peer
    assert set(f["versus"]) == {"plain_optuna", "keras_tuner"}
    assert all(v["seeds"] == 1 and v["se_binomial"] > 0 for v in f["versus"].values())
    assert f["tlsearch"] and TLSEARCH_FIGURES <= set(f["tlsearch"][0])
    assert all(f["tlsearch"][0][k] is not None for k in TLSEARCH_FIGURES)
    assert f["rss"]["trials"] == 2 and f["rss"]["rss_growth_mb"] is not None
    assert f["trial_scaling"]["seconds_per_added_trial"] > 0
    kinds = {row["kind"] for row in f["sweep"]["rows"]}
    assert kinds == {"data", "backbones"}
    assert TARGETS <= set(f["targets"]) and all("met" in t for t in f["targets"].values())
    assert "| peer |" in (tmp_path / "results.md").read_text()


@pytest.mark.timeout(300)
def test_pruning_benchmark_judges_each_setting_on_test(tmp_path, bench_env):
    env = bench_env
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "pruning_judged_on_test.py"),
                        "--tiny", "--max-trials", "3", "--out", str(tmp_path / "p.json")],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = json.loads((tmp_path / "p.json").read_text())
    assert [row["setting"] for row in got["rows"]] == ["off", "old_default", "new_default"]
    for row in got["rows"]:
        assert row["completed"] + row["pruned"] == 3, row
        assert 0.0 <= row["test_accuracy"] <= 1.0, row
    s = got["summary"]
    assert s["off"]["pruned_mean"] == 0
    assert "at_least_as_good_as_off" in s["new_default"]
    assert "at_least_as_good_as_old_default" in s["new_default"]


@pytest.mark.timeout(300)
def test_augmentation_benchmark_runs_each_setting(tmp_path, bench_env):
    env = bench_env
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "augmentation_small_data.py"),
                        "--tiny", "--out", str(tmp_path / "aug.json")], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = json.loads((tmp_path / "aug.json").read_text())["rows"]
    assert [row["setting"] for row in rows] == ["none", "fits", "fits+mixup", "wrong"]
    assert [row["cached"] for row in rows] == [True, False, False, False]
    assert "| training images | augmentation |" in r.stdout


@pytest.mark.timeout(300)
def test_stage1_ratio_benchmark_reports_both_sides(tmp_path, bench_env):
    env = bench_env
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "stage1_ratio.py"), "--tiny",
                        "--plain-trials", "1", "--trials", "3", "--out", str(tmp_path / "s1.json")],
                       env=env, capture_output=True, text=True, cwd=REPO / "benchmarks")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = json.loads((tmp_path / "s1.json").read_text())
    assert len(got["plain_loop_trial_seconds"]) == 1 and got["tlsearch_trials"] == 3
    assert got["tlsearch_seconds_per_added_trial"] > 0 and got["ratio_warm"] > 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_refit_ensemble_benchmark_judges_each_model_on_test(tmp_path, bench_env):
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "refit_ensemble.py"), "--tiny",
                        "--out", str(tmp_path)], env=bench_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (result,) = json.loads((tmp_path / "results.json").read_text())
    assert set(result["figures"]) == {"best", "refit", "ensemble5", "ensemble3", "ensemble5_refit"}
    for name, f in result["figures"].items():
        assert 0.0 <= f["test_accuracy"] <= 1.0 and f["n"] == 400, name
        assert f["ms_per_image"] > 0 and f["model_keras_mb"] > 0, name
    assert result["figures"]["refit"]["refit"]["examples"] == 600
    assert result["figures"]["best"]["vs_best"] == 0.0
    assert 1 <= len(result["figures"]["ensemble5"]["members"]) <= 3  # 3 trials in the tiny study
    assert "| ensemble5 |" in (tmp_path / "results.md").read_text()
    both = result["figures"]["ensemble5_refit"]
    assert both["members"] == result["figures"]["ensemble5"]["members"]  # same choice, refit
    assert both["validation"] is None and both["weights"] == result["figures"]["ensemble5"]["weights"]


def test_a_peer_with_no_trial_in_budget_reads_so(monkeypatch):
    """A loaded machine: the plain Optuna loop finished no trial in its budget. The table says
    "none in budget" for it, and the targets do not crash dividing by its missing time."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import run_benchmark as rb

    none = {"test_accuracy_mean": None, "test_accuracy_se": None, "best_val_accuracy_mean": None,
            "best_val_accuracy_min": None, "best_val_accuracy_max": None,
            "trials_finished_mean": 0, "seconds_per_stage1_trial": None,
            "seconds_per_stage1_trial_is": "none"}
    mine = {**none, "test_accuracy_mean": 0.9, "best_val_accuracy_mean": 0.91,
            "best_val_accuracy_min": 0.9, "best_val_accuracy_max": 0.92,
            "trials_finished_mean": 12, "seconds_per_stage1_trial": 0.8,
            "seconds_per_stage1_trial_is": "measured"}
    peers = {"tlsearch": mine, "plain_optuna": none}
    t = rb.targets({"peers": peers, "versus": {}, "tlsearch": [], "rss": None})
    speed = t["stage1_trial_speedup_vs_plain_optuna"]
    assert speed["value"] is None and speed["met"] is False
    rows = {line.split("|")[1].strip(): line for line in rb.peer_table(peers)[2:]}
    assert rows["plain_optuna"].count("none in budget") == 2
    assert "none in budget" not in rows["tlsearch"] and "0.9100; 0.9000-0.9200" in rows["tlsearch"]
    md = rb._targets_md([], {"targets": t})
    assert "plain_optuna: none in budget" in md


def test_test_labels_follow_the_study_class_order():
    """A study orders its classes by name; the data's label ids follow the data set's own order
    (Fashion-MNIST: 0 is tshirt_top). Passing the ids unmapped scored a 0.82-validation model at
    0.35 on the test images."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import peers

    class Study:
        user_attrs = {"tlsearch.classes": ["bag", "coat", "tshirt_top"]}

    data = {"class_names": ["tshirt_top", "bag", "coat"]}
    assert list(peers.study_labels(Study(), data, [0, 1, 2, 0])) == [2, 0, 1, 2]


def test_tiny_sizes_fit_the_committed_sample_without_debian_data(tmp_path, monkeypatch):
    """A newcomer's machine has no Debian Fashion-MNIST: the tiny sizes the benchmark scripts use
    draw disjoint training, validation and test splits from the committed 600-image sample. The
    test split used to keep its full-size default of 1,000 images and failed to draw."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import common

    monkeypatch.setattr(common, "FASHION_DIR", tmp_path / "absent")
    for s in (common.Settings(n_train=30, n_val=30, image_size=32, tiny=True),    # augmentation
              common.Settings(n_train=60, n_val=30, image_size=32, tiny=True),    # LogME ranking
              common.TINY):
        d = common.load_data(s)
        assert d["source"] == "studies/data/fashion-sample"
        assert len(d["x_train"]) == s.n_train and len(d["x_val"]) == s.n_val
        assert 0 < len(d["x_test"]) <= s.n_test
        assert d["x_train"].shape[1:] == (32, 32, 3)
    # the three splits never share an image
    flat = {k: {im.tobytes() for im in d[k]} for k in ("x_train", "x_val", "x_test")}
    assert not flat["x_train"] & flat["x_val"] and not flat["x_test"] & (flat["x_train"] | flat["x_val"])
    # a size the sample cannot hold is refused by name, not with numpy's words
    with pytest.raises(SystemExit, match="validation split asks for"):
        common.load_data(common.Settings(n_train=300, n_val=400, image_size=32, tiny=True))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_domain_selection_modes_benchmark_judges_every_choice(tmp_path, bench_env):
    """Fashion-MNIST-M from the committed sample (Debian's hidden): every arm chosen label-free,
    re-ranked with k labelled target images a class and judged on them, against the ceiling."""
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "domain_selection_modes.py"),
                        "--tiny", "--out", str(tmp_path)], env=bench_env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    from tlsearch.params import DEFAULT_DOMAIN_CRITERION

    res = json.loads((tmp_path / "results.json").read_text())
    assert "sample" in res["data"]["fashion"]
    choices = res["seeds"][0]["choices"]
    expected = {"ceiling"} | {f"{arm}/{mode}" for arm in ("source_only", "head_dann", "backbone_dann")
                              for mode in ("label-free", "rerank-k2", "rerank-k5", "k5")}
    assert set(choices) == expected
    for name, c in choices.items():
        assert 0.0 <= c["target_test_accuracy"] <= 1.0, name
        assert c["n_trials"] == 2 and "spearman" in c and "gap_closed" in c, name
    assert choices["source_only/label-free"]["mode"] == "label-free: val_loss"
    assert choices["head_dann/label-free"]["mode"] == f"label-free: {DEFAULT_DOMAIN_CRITERION}"
    assert choices["backbone_dann/label-free"]["mode"] == f"label-free: {DEFAULT_DOMAIN_CRITERION}"
    studies = res["seeds"][0]["studies"]
    # the backbone arm unfreezes a block and adapts through it; the labelled studies judged on k=5
    spec = yaml.safe_load((tmp_path / "studies" / "seed0" / "backbone_dann-label-free" /
                           "backbone_dann.yaml").read_text())
    assert spec["search"]["unfreeze_blocks"] == 1 and spec["training"]["stage2_epochs"] == 1
    assert spec["search"]["domain_adaptation"]["stage"] == "backbone"
    assert all("lr_stage2" in t["params"] for t in studies["backbone_dann/label-free"]["trials"])
    assert studies["head_dann/k5"]["value_name"] == "val_loss"
    assert set(res["over_seeds"]) == expected and "label_free_closes_a_quarter_and_ranks" in res["goals"]
    # the labelled images come from the target's training split, never its test split
    with np.load(tmp_path / "fashion-mnist-m" / "target_train.npz") as f:
        train = {x.tobytes() for x in f["x"]}
    with np.load(tmp_path / "target_labelled_k5_seed0.npz") as f:
        assert all(x.tobytes() in train for x in f["x"]) and np.bincount(f["y"]).tolist() == [5] * 10
    assert "| choice |" in (tmp_path / "results.md").read_text()
