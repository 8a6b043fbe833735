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
