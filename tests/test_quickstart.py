"""The quickstart end to end, on the real EfficientNet-Lite0 ImageNet weights."""

from __future__ import annotations

import optuna
import pytest
import yaml

from conftest import REPO
from tlsearch.cli import main


@pytest.mark.slow
def test_quickstart_end_to_end_beats_training_from_scratch(tmp_path, capsys):
    raw = yaml.safe_load((REPO / "studies" / "quickstart.yaml").read_text())
    for key in ("path", "test"):  # the study file's folders, read from the repository
        raw["data"][key] = str(REPO / "studies" / raw["data"][key])
    study_file = tmp_path / "quickstart.yaml"
    study_file.write_text(yaml.safe_dump(raw))
    assert main(["run", str(study_file)]) == 0
    out = capsys.readouterr().out
    assert "optuna-dashboard" in out
    assert "held-out test set (data.test)" in out  # the chosen trial judged on unseen images
    study = optuna.load_study(study_name="quickstart", storage=f"sqlite:///{tmp_path}/quickstart.db")
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == raw["n_trials"]
    best = study.best_trial
    step = best.user_attrs["tlsearch.best_step"]
    acc = next(h["val_accuracy"] for h in best.user_attrs["tlsearch.history"] if h["step"] == step)

    # the same data and head on a small network trained from random weights, every block training
    data = {k: v for k, v in raw["data"].items() if k != "test"}
    scratch = dict(raw, name="scratch", data=data, n_trials=1, backbones=["tiny_cnn"],
                   training={"stage1_epochs": 2, "stage2_epochs": 10, "batch_size": 32,
                             "keep_bn_frozen": False},
                   search={"unfreeze_blocks": 4, "head_width": 128, "dropout": 0.2,
                           "lr_stage1": 3e-3, "lr_stage2": 1e-3})
    scratch_file = tmp_path / "scratch.yaml"
    scratch_file.write_text(yaml.safe_dump(scratch))
    assert main(["run", str(scratch_file)]) == 0
    s = optuna.load_study(study_name="scratch", storage=f"sqlite:///{tmp_path}/scratch.db")
    s_best = s.best_trial
    s_acc = next(h["val_accuracy"] for h in s_best.user_attrs["tlsearch.history"]
                 if h["step"] == s_best.user_attrs["tlsearch.best_step"])
    assert best.value < s_best.value, (best.value, s_best.value)
    assert acc > s_acc + 0.05, (acc, s_acc)
    assert acc > 0.75
