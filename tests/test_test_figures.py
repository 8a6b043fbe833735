"""Test figures are those of the exported model: for a screening objective, the held-out figures
(after the study, in metadata.json, from ``tlsearch evaluate``) are what the stored threshold
reaches on the test images, never a threshold re-chosen on the test labels."""

from __future__ import annotations

import json

import optuna
import pytest

import tlsearch
from conftest import make_image_folder, write_study
from tlsearch.cli import main
from tlsearch.config import load_config

#: four classes, the positive one neither the first nor the default index 1
CLASSES = ("bag", "coat", "shirt", "trouser")
SHIRT = CLASSES.index("shirt")


@pytest.fixture
def screening(tmp_path):
    make_image_folder(tmp_path / "images", classes=CLASSES, per_class=16)
    make_image_folder(tmp_path / "test-images", classes=CLASSES, per_class=10, seed=7)
    # four "bags" on the test set drawn as shirts are: the threshold that keeps 90 % specificity
    # on these labels is not the one chosen on validation
    hard = make_image_folder(tmp_path / "hard", classes=("a", "b", "striped"), per_class=4, seed=9)
    for f in sorted((hard / "striped").iterdir()):
        f.rename(tmp_path / "test-images" / "bag" / f"striped_{f.name}")
    return write_study(tmp_path / "s.yaml", n_trials=2, objective="val_sens_at_spec",
                       objective_params={"specificity": 0.9, "positive": SHIRT},
                       data={"test": "test-images"},
                       training={"stage1_epochs": 6, "stage2_epochs": 0, "batch_size": 8},
                       search={"unfreeze_blocks": 0, "head_width": 16, "lr_stage1": 0.01})


def _rates_of_export(export_dir, test_dir, positive: str) -> tuple[float, float]:
    """Sensitivity and specificity of ``positive`` as ``tlsearch.load(...).predict`` decides."""
    predictor = tlsearch.load(export_dir)
    tp = fn = tn = fp = 0
    for cls in CLASSES:
        for row in predictor.predict(test_dir / cls):
            said = row["label"] == positive
            if cls == positive:
                tp, fn = tp + said, fn + (not said)
            else:
                fp, tn = fp + said, tn + (not said)
    return tp / (tp + fn), tn / (tn + fp)


def test_test_figures_are_the_exported_models_at_its_stored_threshold(screening, tmp_path,
                                                                      capsys):
    assert main(["run", str(screening)]) == 0
    out_dir = tmp_path / "export"
    assert main(["export", str(screening), "--out", str(out_dir), "--formats", ""]) == 0
    meta = json.loads((out_dir / "metadata.json").read_text())
    rule = meta["decision"]
    assert rule["rule"] == "threshold" and rule["positive_class"] == "shirt"
    sens, spec = _rates_of_export(out_dir, tmp_path / "test-images", "shirt")
    test = meta["test"]
    assert test["sens_at_spec"] == pytest.approx(sens)
    assert rule["objective_params"] == {"specificity": 0.9, "positive": SHIRT}
    point = test["operating_point"]
    assert point["threshold"] == rule["threshold"] and point["positive_class"] == "shirt"
    assert point["sensitivity"] == pytest.approx(sens)
    assert point["specificity"] == pytest.approx(spec)
    assert point["required_specificity"] == 0.9
    assert point["requirement_met"] == (spec >= 0.9)
    assert test["per_class"]["shirt"]["recall"] == pytest.approx(sens)

    # the evaluation after the study, stored on the study, says the same
    cfg = load_config(screening)
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    stored = study.user_attrs["tlsearch.test"]
    assert stored["trial"] == meta["trial"]
    assert stored["sens_at_spec"] == pytest.approx(sens)
    assert stored["operating_point"]["specificity"] == pytest.approx(spec)

    # and so does `tlsearch evaluate`, reading the requirement and the positive class from the export
    capsys.readouterr()
    assert main(["evaluate", str(out_dir), str(tmp_path / "test-images"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sens_at_spec"] == pytest.approx(sens)
    assert result["operating_point"] == pytest.approx(point)


# ------------------------------------------------------------------------ the positive class


def test_the_positive_class_is_named_or_given_by_index(tmp_path):
    make_image_folder(tmp_path / "images", classes=CLASSES, per_class=4)
    named = write_study(tmp_path / "named.yaml", n_trials=1, objective="val_sens_at_spec",
                        objective_params={"positive": "shirt"},
                        training={"stage1_epochs": 1, "stage2_epochs": 0, "batch_size": 8},
                        search={"unfreeze_blocks": 0, "head_width": 8})
    assert main(["run", str(named)]) == 0
    cfg = load_config(named)
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    assert study.user_attrs["tlsearch.objective_params"] == {"specificity": 0.9,
                                                             "positive": SHIRT}
    assert main(["export", str(named), "--out", str(tmp_path / "e"), "--formats", ""]) == 0
    rule = json.loads((tmp_path / "e" / "metadata.json").read_text())["decision"]
    assert (rule["positive"], rule["positive_class"]) == (SHIRT, "shirt")


@pytest.mark.parametrize("positive", ["sock", 4, True])
def test_a_positive_class_not_among_the_classes_is_refused_before_anything_is_written(
        tmp_path, capsys, positive):
    make_image_folder(tmp_path / "images", classes=CLASSES, per_class=4)
    study = write_study(tmp_path / "s.yaml", n_trials=1, objective="val_sens_at_spec",
                        objective_params={"positive": positive},
                        search={"unfreeze_blocks": 0, "head_width": 8})
    assert main(["run", str(study)]) == 2
    err = capsys.readouterr().err
    assert "`objective_params.positive`" in err and str(list(CLASSES)) in err
    assert "0..3" in err and repr(positive) in err
    assert not (tmp_path / "tiny.db").exists()


# ------------------------------------------------------------- the class-weighted validation loss


def test_val_weighted_loss_weighs_by_the_studys_class_weights(tmp_path, image_folder):
    """The value a trial reports is the loss with ``training.class_weight``'s weights, on the
    validation examples, as its rebuilt model predicts them; the test figure uses the same."""
    import numpy as np

    from tlsearch import metrics as M
    from tlsearch.export.exporter import rebuild_model
    from tlsearch.search.artifacts import AtomicFileSystemArtifactStore
    from tlsearch.search.inputs import check_inputs

    make_image_folder(tmp_path / "test-images", per_class=4, seed=7)
    weights = {"circle": 6.0, "square": 1.0, "stripes": 0.5}
    path = write_study(tmp_path / "s.yaml", n_trials=1, objective="val_weighted_loss",
                       data={"test": "test-images"},
                       training={"stage1_epochs": 2, "stage2_epochs": 0, "batch_size": 8,
                                 "class_weight": weights},
                       search={"unfreeze_blocks": 0, "head_width": 8})
    assert main(["run", str(path)]) == 0
    cfg = load_config(path)
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    best = study.best_trial
    model, modality = rebuild_model(cfg, study, best, AtomicFileSystemArtifactStore(cfg.artifact_dir))
    _, data = check_inputs(cfg)
    p = modality.predict_all(model, data.x_val)
    w = [weights[c] for c in data.class_names]
    assert best.value == pytest.approx(M.weighted_crossentropy(p, data.y_val, w), rel=1e-4)
    assert best.value != pytest.approx(M.weighted_crossentropy(p, data.y_val, "balanced"),
                                       rel=1e-3)
    pt = modality.predict_all(model, data.x_test)
    test = study.user_attrs["tlsearch.test"]
    assert test["weighted_loss"] == pytest.approx(M.weighted_crossentropy(pt, data.y_test, w))


# ---------------------------------------------------------------------------- macro F1, once


def test_every_macro_f1_is_the_same_number():
    """The objective, the held-out evaluation and the report's macro average agree, and agree with
    scikit-learn's f1_score(average="macro"): a class neither present nor predicted is left out,
    a predicted class that never occurs scores 0."""
    import numpy as np
    from sklearn.metrics import f1_score

    from tlsearch import metrics as M
    from tlsearch.evaluation import evaluate_probabilities
    from tlsearch.report.evaluation import macro_row

    classes = ["a", "b", "c", "d"]
    p = np.array([[.8, .1, .05, .05], [.1, .8, .05, .05], [.6, .3, .05, .05], [.2, .7, .05, .05],
                  [.1, .1, .7, .1]])
    y = np.array([0, 1, 1, 1, 0])  # "c" predicted, never present; "d" neither
    pred = p.argmax(axis=1)
    expected = f1_score(y, pred, average="macro", zero_division=0)
    assert M.macro_f1(p, y) == pytest.approx(expected)
    assert M.f1_of_labels(pred, y) == pytest.approx(expected)
    assert evaluate_probabilities(p, y, classes)["macro_f1"] == pytest.approx(expected)
    assert evaluate_probabilities(p, y, classes, objective="val_macro_f1")["macro_f1"] == \
        pytest.approx(expected)
    assert float(macro_row(y, pred)[3]) == pytest.approx(expected, abs=5e-4)


def test_held_out_figures_carry_their_standard_errors():
    """Test figures come with how far they would move on another test set of the same size: the
    binomial error of accuracy and the standard error of the mean crossentropy, printed as ±."""
    import numpy as np

    from tlsearch.evaluation import evaluate_probabilities
    from tlsearch.export.evaluate import format_evaluation

    p = np.array([[.9, .1], [.2, .8], [.6, .4], [.3, .7], [.55, .45]])
    y = np.array([0, 1, 1, 1, 0])
    out = evaluate_probabilities(p, y, ["a", "b"])
    assert out["accuracy"] == pytest.approx(0.8)
    assert out["accuracy_se"] == pytest.approx((0.8 * 0.2 / 5) ** 0.5)
    ce = -np.log(p[np.arange(5), y])
    assert out["loss_se"] == pytest.approx(np.std(ce, ddof=1) / 5 ** 0.5)
    line = format_evaluation(out, "test").splitlines()[0]
    assert f"accuracy 0.8000 ± {out['accuracy_se']:.4f}" in line
    assert f"± {out['loss_se']:.4f}" in line
    old = {k: v for k, v in out.items() if not k.endswith("_se")}  # stored before: no ±
    assert "±" not in format_evaluation(old, "test").splitlines()[0]


# ------------------------------------------------------------ every test evaluation is kept


def test_a_resumed_study_whose_best_changes_keeps_every_test_evaluation(tmp_path, image_folder,
                                                                        capsys):
    from tlsearch.runner.prepare import prepare

    make_image_folder(tmp_path / "test-images", per_class=4, seed=7)
    path = write_study(tmp_path / "s.yaml", n_trials=1, data={"test": "test-images"},
                       sampler={"type": "random", "warm_start": False},
                       training={"stage1_epochs": 3, "stage2_epochs": 0, "batch_size": 8},
                       search={"unfreeze_blocks": 0, "head_width": 8,
                               "lr_stage1": {"low": 1e-6, "high": 1e-1, "log": True},
                               "lr_stage2": 1e-7})
    cfg = load_config(path)
    study = prepare(cfg).study
    study.enqueue_trial({"lr_stage1": 1e-6})  # learns nothing: the first best is a poor one
    assert main(["run", str(path)]) == 0
    first = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    (before,) = first.user_attrs["tlsearch.tests"]
    assert before["trial"] == 0 and "time" in before and "accuracy" in before
    assert "the test set has judged" not in capsys.readouterr().out

    first.enqueue_trial({"lr_stage1": 0.05})
    assert main(["run", str(path), "--n-trials", "2"]) == 0
    out = capsys.readouterr().out
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    assert study.best_trial.number == 1, "precondition: the resumed run found a better trial"
    history = study.user_attrs["tlsearch.tests"]
    assert [e["trial"] for e in history] == [0, 1]
    assert history[0] == before  # the first evaluation is kept as it was, time and figures
    assert history[1]["time"] >= before["time"] and history[1]["n"] == 12
    assert study.user_attrs["tlsearch.test"] == history[1]  # the latest, as before
    assert "the test set has judged 2 trials (#0, #1)" in " ".join(out.split())
    assert "no longer fully held out" in " ".join(out.split())

    # a third run with the same best evaluates nothing again
    assert main(["run", str(path), "--n-trials", "2"]) == 0
    again = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    assert again.user_attrs["tlsearch.tests"] == history


def test_a_study_stored_with_a_single_test_evaluation_still_reads():
    from tlsearch.search.attrs import test_evaluations

    study = optuna.create_study()
    assert test_evaluations(study) == []
    old = {"trial": 3, "n": 12, "accuracy": 0.75, "loss": 0.6}
    study.set_user_attr("tlsearch.test", old)
    assert test_evaluations(study) == [old]


def test_val_weighted_loss_weights_resolve_from_the_study():
    """``auto`` weighs as training does (balanced on the training labels); explicit
    ``objective_params.class_weight`` takes class names; a bad name is a clear error."""
    import numpy as np

    from tlsearch.config import parse_config
    from tlsearch.data import Dataset
    from tlsearch.errors import UserError
    from tlsearch.search.inputs import resolve_objective_params

    y = np.array([0] * 6 + [1] * 3 + [2] * 3)
    data = Dataset("image", np.zeros((12, 1)), y, np.zeros((3, 1)), np.array([0, 1, 2]),
                   ["a", "b", "c"])

    def resolved(**study):
        cfg = parse_config({"name": "t", "n_trials": 1, "data": {"path": "x"},
                            "backbones": ["tiny_cnn"], "objective": "val_weighted_loss", **study})
        return resolve_objective_params(cfg, data)["class_weight"]

    assert resolved(training={"class_weight": "auto"}) == pytest.approx([12 / 18, 12 / 9, 12 / 9])
    assert resolved() == pytest.approx([12 / 18, 12 / 9, 12 / 9])  # balanced on training labels
    assert resolved(training={"class_weight": {"b": 3.0}}) == [1.0, 3.0, 1.0]
    assert resolved(objective_params={"class_weight": {"c": 2.0, 0: 0.5}},
                    training={"class_weight": "auto"}) == [0.5, 1.0, 2.0]
    with pytest.raises(UserError, match=r"`objective_params.class_weight.z`.*\['a', 'b', 'c'\]"):
        resolved(objective_params={"class_weight": {"z": 2.0}})
