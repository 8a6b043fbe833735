"""An honest number: a held-out test set evaluated once for the chosen trial, in the run summary,
on the study, in metadata.json and the report; ``tlsearch evaluate`` on any labelled data."""

from __future__ import annotations

import json

import optuna
import pytest

from conftest import make_image_folder, write_study
from tlsearch.cli import main
from tlsearch.config import load_config


@pytest.fixture
def with_test(tmp_path, image_folder):
    make_image_folder(tmp_path / "test-images", per_class=4, seed=7)
    return write_study(tmp_path / "s.yaml", n_trials=2, data={"test": "test-images"},
                       search={"unfreeze_blocks": 1, "head_width": 8})


def test_a_study_with_a_test_set_reports_test_metrics(with_test, tmp_path, capsys):
    assert main(["run", str(with_test)]) == 0
    out = capsys.readouterr().out
    assert "held-out test set (data.test)" in out and "12 examples" in out
    cfg = load_config(with_test)
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    stored = study.user_attrs["tlsearch.test"]
    assert stored["trial"] == study.best_trial.number and stored["n"] == 12
    assert 0.0 <= stored["accuracy"] <= 1.0 and set(stored["per_class"]) == {"circle", "square",
                                                                              "stripes"}

    out_dir = tmp_path / "export"
    assert main(["export", str(with_test), "--out", str(out_dir), "--formats", ""]) == 0
    meta = json.loads((out_dir / "metadata.json").read_text())
    assert meta["test"]["n"] == 12 and "accuracy" in meta["test"] and "loss" in meta["test"]
    assert meta["test"]["accuracy"] == pytest.approx(stored["accuracy"], abs=1e-6)

    capsys.readouterr()
    assert main(["evaluate", str(out_dir), str(tmp_path / "test-images"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 12 and result["accuracy"] == pytest.approx(stored["accuracy"], abs=1e-6)
    assert {"precision", "recall", "f1", "support"} == set(result["per_class"]["circle"])

    assert main(["report", str(with_test), "--out", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert "Best model on the held-out test set" in html


def test_evaluate_refuses_unknown_labels(tmp_path, image_folder, capsys):
    study = write_study(tmp_path / "s.yaml", n_trials=1, search={"unfreeze_blocks": 0})
    assert main(["run", str(study)]) == 0
    assert main(["export", str(study), "--out", str(tmp_path / "e"), "--formats", ""]) == 0
    make_image_folder(tmp_path / "other", classes=("circle", "triangle"), per_class=2)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "e"), str(tmp_path / "other")]) == 2
    assert "['triangle'] are not among the model's classes" in capsys.readouterr().err


def test_without_a_test_set_the_report_says_validation_is_optimistic(tmp_path, image_folder):
    study = write_study(tmp_path / "s.yaml", n_trials=1, search={"unfreeze_blocks": 0})
    assert main(["run", str(study)]) == 0
    assert main(["report", str(study), "--out", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert "optimistic: it chose the trial" in html
