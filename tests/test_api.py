"""The Python API: tlsearch.run, and tlsearch.objective inside a user's own Optuna study."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState

from conftest import write_study
from tlsearch.errors import UserError


class PruneTrialAt(optuna.pruners.BasePruner):
    """Prunes one trial at one step: deterministic, unlike the median pruner."""

    def __init__(self, number: int, step: int) -> None:
        self.number, self.step = number, step

    def prune(self, study, trial) -> bool:
        return trial.number == self.number and (trial.last_step or 0) >= self.step


def test_objective_in_a_users_own_study_with_an_extra_parameter(tmp_path, image_folder):
    import tlsearch
    from tlsearch.export import export_study

    path = write_study(tmp_path / "s.yaml", search={"unfreeze_blocks": 1, "head_width": [8, 16]})
    cfg = tlsearch.load_config(path)
    objective = tlsearch.objective(path)

    def mine(trial: optuna.Trial) -> float:
        trial.suggest_float("my_threshold", 0.1, 0.9)  # the user's own parameter
        return objective(trial)

    study = optuna.create_study(direction=cfg.direction, sampler=optuna.samplers.RandomSampler(0),
                                pruner=PruneTrialAt(1, 2))
    study.optimize(mine, n_trials=2)

    done, pruned = study.trials
    assert done.state == TrialState.COMPLETE and pruned.state == TrialState.PRUNED
    for t in study.trials:
        assert 0.1 <= t.params["my_threshold"] <= 0.9 and "head_width" in t.params
    # every epoch reported on one step count across both stages; the user's pruner decided
    assert sorted(done.intermediate_values) == [0, 1, 2, 3]
    assert sorted(pruned.intermediate_values) == [0, 1, 2]
    assert done.value == min(h["val_loss"] for h in done.user_attrs["tlsearch.history"])
    assert done.user_attrs["tlsearch.artifact"]["sha256"]
    # what export reads was added to the user's study, so it exports like a tlsearch study
    assert study.user_attrs["tlsearch.classes"] == ["circle", "square", "stripes"]
    out = tmp_path / "export"
    export_study(cfg, out, study=study, formats=(), log=lambda m: None)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["trial"] == 0 and meta["params"]["head_width"] == done.params["head_width"]


def test_objective_refuses_a_study_of_the_wrong_direction(tmp_path, image_folder):
    import tlsearch

    path = write_study(tmp_path / "s.yaml")  # val_loss: minimised
    study = optuna.create_study(direction="maximize")
    with pytest.raises(UserError, match="direction='minimize'"):
        study.optimize(tlsearch.objective(path), n_trials=1)


def test_run_returns_the_study_with_n_trials_finished(tmp_path, image_folder):
    import tlsearch

    path = write_study(tmp_path / "s.yaml", n_trials=2, search={"unfreeze_blocks": 0})
    study = tlsearch.run(path, quiet=True)
    assert isinstance(study, optuna.Study)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    again = tlsearch.run(tlsearch.load_config(path), n_trials=3, quiet=True)  # resumes
    assert len(again.trials) == 3


def _no_storage(monkeypatch):
    """Any Optuna study created or loaded from here on fails the test."""
    def refused(*a, **k):
        raise AssertionError("a study storage was opened")

    monkeypatch.setattr(optuna, "create_study", refused)
    monkeypatch.setattr(optuna, "load_study", refused)


def test_the_objective_loads_its_inputs_without_a_study_of_its_own(tmp_path, image_folder,
                                                                    monkeypatch):
    """The inputs come from load_inputs: no scratch study is created to get them, and the user's
    study is checked against (and given) the inputs' own attributes."""
    import tlsearch
    from tlsearch.api import prepare_standalone

    path = write_study(tmp_path / "s.yaml", search={"unfreeze_blocks": 0})
    cfg = tlsearch.load_config(path)
    study = optuna.create_study(direction=cfg.direction)
    _no_storage(monkeypatch)
    inputs = prepare_standalone(cfg, warn=lambda m: None)
    assert inputs.data.class_names == ["circle", "square", "stripes"]
    assert not (tmp_path / "tiny.db").exists()
    study.optimize(tlsearch.objective(path), n_trials=1)
    assert study.trials[0].state == TrialState.COMPLETE
    attrs = json.loads(json.dumps(inputs.study_attrs()))
    assert {k: study.user_attrs[k] for k in attrs} == attrs
    assert study.user_attrs["tlsearch.meaning"]["objective"] == "val_loss"  # its stored name


def test_the_objective_refuses_a_study_of_other_classes(tmp_path, image_folder):
    import tlsearch

    path = write_study(tmp_path / "s.yaml", search={"unfreeze_blocks": 0})
    study = optuna.create_study()
    study.set_user_attr("tlsearch.classes", ["cat", "dog"])
    with pytest.raises(UserError, match=r"classes \['cat', 'dog'\], but the data now has "
                                        r"\['circle', 'square', 'stripes'\]"):
        study.optimize(tlsearch.objective(path), n_trials=1)


def test_workers_need_the_study_file_not_a_config_made_in_python(tmp_path, image_folder):
    import tlsearch

    cfg = tlsearch.load_config(write_study(tmp_path / "s.yaml"))
    with pytest.raises(UserError, match=r"`workers`: worker processes read the study from its "
                                        r"file; pass the study file's path"):
        tlsearch.run(cfg, workers=2, quiet=True)
    with pytest.raises(UserError, match="`workers`: expected at least 1, got 0"):
        tlsearch.run(cfg, workers=0, quiet=True)
    assert not (tmp_path / "tiny.db").exists()  # nothing written
