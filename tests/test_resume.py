"""Resume refuses what changes the meaning of a trial; export refuses a study file that no longer
describes how a trial was trained. Both exit 2 and write nothing."""

from __future__ import annotations

import optuna
import pytest

from conftest import write_study
from tlsearch.cli import main
from tlsearch.config import load_config


def _trials(path):
    cfg = load_config(path)
    return optuna.load_study(study_name=cfg.name, storage=cfg.storage_url).trials


@pytest.fixture
def ran(tmp_path, image_folder):
    study_file = write_study(tmp_path / "s.yaml", n_trials=1,
                             search={"unfreeze_blocks": 1, "head_width": 8})
    assert main(["run", str(study_file)]) == 0
    return study_file


@pytest.mark.parametrize("change, field, old, new", [
    ({"objective": "val_accuracy"}, "objective", '"val_loss"', '"val_accuracy"'),
    ({"data": {"image_size": 24}}, "data.image_size", "32", "24"),
    ({"training": {"stage1_epochs": 3}}, "training.stage1_epochs", "2", "3"),
    ({"training": {"keep_bn_frozen": False}}, "training.keep_bn_frozen", "true", "false"),
    ({"training": {"class_weight": "auto"}}, "training.class_weight", "null", '"auto"'),
])
def test_a_change_of_meaning_is_refused_naming_old_and_new(ran, capsys, change, field, old, new):
    write_study(ran, n_trials=2, search={"unfreeze_blocks": 1, "head_width": 8}, **change)
    capsys.readouterr()
    assert main(["run", str(ran)]) == 2
    err = capsys.readouterr().err
    assert f"{field}: was {old}, now {new}" in err, err
    assert "new `name`" in err
    assert len(_trials(ran)) == 1  # nothing added


def test_changed_data_is_refused(ran, capsys, image_folder):
    from conftest import make_image_folder

    make_image_folder(image_folder, per_class=13, seed=1)  # one more image per class
    capsys.readouterr()
    assert main(["run", str(ran), "--n-trials", "2"]) == 2
    assert "data: was" in capsys.readouterr().err
    assert len(_trials(ran)) == 1


def test_budget_and_search_settings_may_change(ran):
    write_study(ran, n_trials=2, timeout=600, search={"unfreeze_blocks": 1, "head_width": 8},
                sampler={"type": "tpe", "n_startup_trials": 1}, pruner={"type": "median"})
    assert main(["run", str(ran)]) == 0
    assert len(_trials(ran)) == 2


def test_export_refuses_a_study_file_that_changed_what_was_trained(ran, tmp_path, capsys):
    write_study(ran, n_trials=1, search={"unfreeze_blocks": 1, "head_width": 8},
                data={"image_size": 24})
    capsys.readouterr()
    assert main(["export", str(ran), "--out", str(tmp_path / "out"), "--formats", ""]) == 2
    err = capsys.readouterr().err
    assert "data.image_size: was 32, now 24" in err
    assert not (tmp_path / "out").exists()


def test_export_after_an_objective_edit_prints_no_stored_value_under_the_new_name(ran, tmp_path,
                                                                                 capsys):
    """It printed "(val_accuracy=1.104)", the stored loss under the new objective's name,
    before refusing."""
    write_study(ran, n_trials=1, search={"unfreeze_blocks": 1, "head_width": 8},
                objective="val_accuracy")
    capsys.readouterr()
    assert main(["export", str(ran), "--out", str(tmp_path / "out"), "--formats", ""]) == 2
    got = capsys.readouterr()
    assert 'objective: was "val_loss", now "val_accuracy"' in got.err
    assert "val_accuracy=" not in got.out + got.err


def test_a_refused_export_does_not_create_the_artifacts_folder(ran, tmp_path, capsys):
    """An export whose study lost its artifacts folder is refused, naming the missing weights;
    it re-created an empty folder on the way."""
    import shutil

    cfg = load_config(ran)
    shutil.rmtree(cfg.artifact_dir)
    capsys.readouterr()
    assert main(["export", str(ran), "--out", str(tmp_path / "out"), "--formats", ""]) == 2
    assert "cannot be read (not found)" in capsys.readouterr().err
    assert not cfg.artifact_dir.exists() and not (tmp_path / "out").exists()
