"""Ensembles of trials: greedy selection with replacement, and the ensemble exported as one model
that loads in a fresh process and equals the weighted average of its members."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_image_folder, write_reviews, write_study
from tlsearch.cli import main

# ------------------------------------------------------------------ greedy selection, by hand

Y = np.array([0, 0, 1, 1])
# A is right on the first two examples only, B on the last two only; their average on all four
A = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
B = np.array([[0.4, 0.6], [0.4, 0.6], [0.1, 0.9], [0.1, 0.9]])


@pytest.mark.parametrize("objective", ["val_accuracy", "val_loss"])
def test_two_together_beat_each_alone(objective):
    from tlsearch.export.selection import greedy_selection
    from tlsearch.params import compute

    chosen = greedy_selection([A, B], Y, objective, k=4)
    assert set(chosen.counts) == {0, 1} and chosen.weights == {0: 0.5, 1: 0.5}
    alone = [compute(objective, p, Y).value for p in (A, B)]
    if objective == "val_accuracy":
        assert chosen.value == 1.0 and max(alone) == 0.5
    else:
        assert chosen.value < min(alone)
    np.testing.assert_allclose(chosen.average([A, B]), (A + B) / 2)


def test_with_replacement_a_member_is_added_twice():
    """The best mix here is about 0.69 A + 0.31 B: three additions (A, B, A) reach 2/3."""
    from tlsearch.export.selection import greedy_selection

    y = np.array([0, 0])
    a = np.array([[0.9, 0.1], [0.2, 0.8]])
    b = np.array([[0.1, 0.9], [0.6, 0.4]])
    chosen = greedy_selection([a, b], y, "val_loss", k=3)
    assert chosen.additions == (0, 1, 0)
    assert chosen.counts == {0: 2, 1: 1} and chosen.weights[0] == pytest.approx(2 / 3)
    assert chosen.values[2] < chosen.values[1] < chosen.values[0]


def test_k_1_is_the_best_single_and_the_best_prefix_is_kept():
    from tlsearch.export.selection import greedy_selection
    from tlsearch.params import compute

    worse = np.array([[0.6, 0.4], [0.6, 0.4], [0.45, 0.55], [0.45, 0.55]])  # all right, unsure
    probs = [A, worse, B]
    losses = [compute("val_loss", p, Y).value for p in probs]
    one = greedy_selection(probs, Y, "val_loss", k=1)
    assert one.additions == (int(np.argmin(losses)),) and one.value == min(losses)
    # more additions never make the kept ensemble worse than the best prefix seen
    many = greedy_selection(probs, Y, "val_loss", k=6)
    assert many.value == min(many.values) and len(many.additions) <= 6
    with pytest.raises(ValueError):
        greedy_selection(probs, Y, "val_loss", k=0)


# ------------------------------------------------------------------ the exported ensemble

@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tiny image study with three complete trials and a test set."""
    root = tmp_path_factory.mktemp("ensemble")
    make_image_folder(root / "images")
    make_image_folder(root / "test", per_class=4, seed=7)
    path = write_study(root / "study.yaml", n_trials=3,
                       data={"path": "images", "validation_split": 0.25, "image_size": 32,
                             "test": "test"},
                       search={"unfreeze_blocks": {"low": 0, "high": 1}})
    assert main(["run", str(path)]) == 0
    return path


def _members(study_path, numbers):
    from tlsearch.config import load_config
    from tlsearch.export.exporter import rebuild_model, select_trial
    from tlsearch.search.artifacts import AtomicFileSystemArtifactStore
    from tlsearch.runner.prepare import load_study

    cfg = load_config(study_path)
    st = load_study(cfg)
    store = AtomicFileSystemArtifactStore(cfg.artifact_dir)
    return cfg, st, [rebuild_model(cfg, st, select_trial(st, n), store) for n in numbers]


def _fresh_probabilities(export, x, tmp_path):
    """``tlsearch.load(export).predict_proba(x)`` run in a new Python process."""
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy as np, tlsearch; "
            "p = tlsearch.load(sys.argv[1]).predict_proba(np.load(sys.argv[2])); "
            "np.save(sys.argv[3], p)")
    r = subprocess.run([sys.executable, "-c", code, str(export), str(tmp_path / "x.npy"),
                        str(tmp_path / "p.npy")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return np.load(tmp_path / "p.npy")


def test_ensemble_model_in_every_format_equals_the_average_of_its_members(study, tmp_path):
    from tlsearch.export.ensemble_model import ensemble_model
    from tlsearch.export.exporter import write_export

    cfg, st, built = _members(study, [0, 1])
    models = [m for m, _ in built]
    model = ensemble_model(models, [0.25, 0.75], [0, 1])
    record = {"study": "tiny", "trial": None, "value": None, "best_step": None,
              "best_stage": None, "classes": ["circle", "square", "stripes"],
              "decision": {"rule": "argmax"}}
    out = tmp_path / "hand"
    result = write_export(cfg, model, built[0][1], out, record, log=lambda m: None)
    for name in ("keras", "saved_model", "litert"):  # each checked against the Keras model
        assert result.formats[name]["status"] == "ok", result.formats[name]
    assert result.formats["onnx"]["status"] in ("ok", "skipped"), result.formats["onnx"]
    x = np.random.default_rng(3).integers(0, 256, (5, 32, 32, 3)).astype(np.float32)
    expected = 0.25 * models[0].predict(x, verbose=0) + 0.75 * models[1].predict(x, verbose=0)
    np.testing.assert_allclose(_fresh_probabilities(out, x, tmp_path), expected, atol=1e-5)


def test_export_ensemble_chooses_members_and_records_them(study, tmp_path, capsys):
    out = tmp_path / "ens"
    assert main(["export", str(study), "--out", str(out), "--ensemble", "3",
                 "--formats", ""]) == 0
    assert "validation probabilities of 3 complete trials (3 computed now" in \
        capsys.readouterr().err
    meta = json.loads((out / "metadata.json").read_text())
    ens = meta["ensemble"]
    weights = {m["trial"]: m["weight"] for m in ens["members"]}
    assert 1 <= len(weights) <= 3 and sum(weights.values()) == pytest.approx(1.0)
    assert len(ens["additions"]) == sum(m["count"] for m in ens["members"]) <= 3
    assert ens["value"] <= ens["best_trial"]["value"] + 1e-9  # val_loss: the kept prefix
    assert ens["inference_cost"]["relative_to_best_trial"] > 0
    assert "measured" in ens["inference_cost"] and "optimistic" in meta["validation"]
    assert meta["test"]["n"] == 12 and meta["formats"]["keras"]["status"] == "ok"
    # the export equals the weighted average of its members, in a fresh process
    _, _, built = _members(study, list(weights))
    x = np.random.default_rng(4).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    expected = sum(w * m.predict(x, verbose=0) for w, (m, _) in zip(weights.values(), built))
    np.testing.assert_allclose(_fresh_probabilities(out, x, tmp_path), expected, atol=1e-5)
    # a second ensemble reads the probabilities back; the report shows the stored ensemble
    assert main(["export", str(study), "--out", str(tmp_path / "ens1"), "--ensemble", "1",
                 "--formats", "", "--json"]) == 0
    got = capsys.readouterr()
    assert "(0 computed now, 3 read back)" in got.err
    ens1 = json.loads(got.out)["ensemble"]
    assert [m["trial"] for m in ens1["members"]] == [ens1["best_trial"]["trial"]]


def test_bad_ensemble_size_exits_2_and_writes_nothing(study, tmp_path, capsys):
    out = tmp_path / "none"
    assert main(["export", str(study), "--out", str(out), "--ensemble", "0"]) == 2
    assert "--ensemble" in capsys.readouterr().err and not out.exists()
    assert main(["export", str(study), "--out", str(out), "--ensemble", "2",
                 "--trial", "0"]) == 2
    assert not out.exists()


def test_report_shows_refit_and_ensemble_beside_the_best_trial():
    """Read from what the study keeps, nothing rebuilt; absent when there is neither."""
    from types import SimpleNamespace

    from tlsearch.config import parse_config
    from tlsearch.report.ensemble import beyond_section

    cfg = parse_config({"name": "s", "n_trials": 1, "data": {"path": ".", "test": "t"},
                        "backbones": ["tiny_cnn"]})
    best = SimpleNamespace(number=2, value=0.41, user_attrs={"tlsearch.best_step": 3})
    attrs = {"tlsearch.test": {"trial": 2, "accuracy": 0.78, "loss": 0.62, "n": 400}}
    study = SimpleNamespace(best_trial=best, user_attrs=attrs)
    assert beyond_section(study, cfg) is None
    attrs["tlsearch.refits"] = {"2": {"examples": 600, "stage1_epochs": 2, "stage2_epochs": 0,
                                      "seconds": 12.0, "test": {"accuracy": 0.8, "loss": 0.55,
                                                                "n": 400}}}
    attrs["tlsearch.ensemble"] = {"k": 5, "value": 0.35, "test": {"accuracy": 0.81, "loss": 0.5,
                                                                  "n": 400},
                                  "members": [{"trial": 2, "weight": 0.6},
                                              {"trial": 7, "weight": 0.4}],
                                  "inference_cost": {"relative_to_best_trial": 2.1}}
    s = beyond_section(study, cfg)
    assert s is not None and "Beyond the best trial" in s.title
    assert "0.7800 ± 0.0207 (n=400)" in s.html  # sqrt(0.78 * 0.22 / 400)
    assert "refit of trial #2" in s.html and "none (trained on it)" in s.html
    assert "#7 (0.40)" in s.html and "2.1x" in s.html and "0.8100 ±" in s.html
    assert "optimistic" in s.html
    attrs["tlsearch.ensemble"].update(refit=True, value=None)  # export --ensemble K --refit
    s = beyond_section(study, cfg)
    assert "ensemble of 2 refit members (K=5)" in s.html and "optimistic" not in s.html


@pytest.mark.slow
def test_text_ensemble_takes_strings_and_equals_the_average_of_its_members(tmp_path, capsys):
    """Text members share one tokenizer; the exported model takes raw strings in a fresh
    process and returns the weighted average of its members' probabilities."""
    write_reviews(tmp_path / "reviews.csv")
    study = write_study(tmp_path / "study.yaml", name="tinytext", n_trials=3,
                        data={"path": "reviews.csv", "image_size": 32}, backbones=["tiny_bert"],
                        training={"stage1_epochs": 2, "stage2_epochs": 1, "batch_size": 12},
                        search={"unfreeze_blocks": {"low": 0, "high": 1}, "head_width": [8, 16],
                                "pooling": ["cls", "mean"], "max_length": 16})
    assert main(["run", str(study)]) == 0
    out = tmp_path / "ens"
    assert main(["export", str(study), "--out", str(out), "--ensemble", "3",
                 "--formats", ""]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    weights = {m["trial"]: m["weight"] for m in meta["ensemble"]["members"]}
    texts = ["a great fun film", "dull and awful acting", ""]
    code = ("import sys, json, tlsearch; "
            "print(json.dumps(tlsearch.load(sys.argv[1]).predict_proba(sys.argv[2:]).tolist()))")
    r = subprocess.run([sys.executable, "-c", code, str(out), *texts], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    got = np.array(json.loads(r.stdout.strip().splitlines()[-1]))
    from tlsearch.modalities import get

    _, _, built = _members(study, list(weights))
    expected = sum(w * get("text").run(m, texts) for w, (m, _) in zip(weights.values(), built))
    np.testing.assert_allclose(got, expected, atol=1e-5)
