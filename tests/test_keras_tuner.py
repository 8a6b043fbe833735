"""KerasTuner on tlsearch's two stages: Hyperband, RandomSearch and BayesianOptimization on the
tiny twin, per-epoch reports on one step count, and the best trial exported and predicting."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import write_study

kt = pytest.importorskip("keras_tuner", reason="KerasTuner is an extra: pip install 'tlsearch[tuner]'")
pytest.importorskip("tensorboard", reason="KerasTuner 1.4 needs tensorboard")


@pytest.fixture
def hypermodel(tmp_path, image_folder):
    from tlsearch.keras_tuner import TransferHyperModel

    path = write_study(tmp_path / "s.yaml", search={"unfreeze_blocks": {"low": 1, "high": 2},
                                                    "head_width": [8, 16]})
    return TransferHyperModel.from_yaml(path)


#: (epoch, logs) of every epoch a callback given to ``tuner.search`` heard, in order
SEEN: list[tuple[int, dict]] = []


@pytest.fixture
def recorder():
    import keras

    class Recorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            SEEN.append((epoch, dict(logs)))

    SEEN.clear()
    return Recorder()


def _record(tuner, trial) -> dict:
    folder = tuner.get_trial_dir(trial.trial_id)
    return json.loads(open(f"{folder}/tlsearch-trial.json").read())


def test_random_search_reports_both_stages_and_exports_the_best(hypermodel, recorder, tmp_path):
    import tlsearch

    tuner = kt.RandomSearch(hypermodel, objective="val_loss", max_trials=2, seed=0,
                            directory=tmp_path / "kt", project_name="random")
    tuner.search(verbose=0, callbacks=[recorder])
    trials = list(tuner.oracle.trials.values())
    assert len(trials) == 2 and all(t.status == "COMPLETED" for t in trials)
    # every epoch of both stages reached the callbacks, on one step count per trial
    assert [epoch for epoch, _ in SEEN] == [0, 1, 2, 3] * 2
    assert all(set(logs) >= {"loss", "val_loss", "val_accuracy"} for _, logs in SEEN)
    for t in trials:
        record = _record(tuner, t)
        assert [h["stage"] for h in record["history"]] == [1, 1, 2, 2]
        assert t.score == pytest.approx(record["value"])  # the best epoch, as KerasTuner sees it
        assert t.best_step == record["best_step"]
        assert 1 <= t.hyperparameters.values["unfreeze_blocks"] <= 2
        assert t.hyperparameters.values["head_width"] in (8, 16)

    out = tmp_path / "best"
    result = hypermodel.export(tuner, out, formats=(), log=lambda m: None)
    meta = json.loads((out / "metadata.json").read_text())
    best = tuner.oracle.get_best_trials(1)[0]
    assert meta["trial"] == best.trial_id and meta["source"] == "keras_tuner"
    assert meta["value"] == pytest.approx(best.score)
    assert result.formats["saved_model"]["status"] == "ok"
    # the export predicts as KerasTuner's own best model (its checkpoint) does
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    kt_model = tuner.get_best_models(1)[0]
    np.testing.assert_allclose(tlsearch.load(out).predict_proba(x), kt_model.predict(x, verbose=0),
                               atol=1e-5)


def test_bayesian_optimization_runs_the_recipe(hypermodel, tmp_path):
    tuner = kt.BayesianOptimization(hypermodel, objective="val_accuracy", max_trials=2, seed=0,
                                    directory=tmp_path / "kt", project_name="bayes")
    tuner.search(verbose=0)
    trials = list(tuner.oracle.trials.values())
    assert len(trials) == 2 and all(t.status == "COMPLETED" for t in trials)
    for t in trials:  # the best epoch is chosen by the tuner's objective, maximised
        record = _record(tuner, t)
        assert record["objective"] == "val_accuracy"
        assert t.score == max(h["val_accuracy"] for h in record["history"])


def test_hyperband_maps_its_epoch_budget_onto_the_stages(hypermodel, recorder, tmp_path):
    tuner = kt.Hyperband(hypermodel, objective="val_loss", max_epochs=3, factor=3, seed=0,
                         hyperband_iterations=1, directory=tmp_path / "kt", project_name="hb")
    tuner.search(verbose=0, callbacks=[recorder])
    trials = list(tuner.oracle.trials.values())
    assert trials and all(t.status == "COMPLETED" for t in trials)
    budgets = {t.hyperparameters.values["tuner/epochs"] for t in trials}
    assert budgets == {1, 3}
    for t in trials:
        epochs = t.hyperparameters.values["tuner/epochs"]
        # stage 1 takes the first stage1_epochs (2) of the budget, stage 2 the rest
        record = _record(tuner, t)
        assert [h["stage"] for h in record["history"]] == [1, 1, 2][:epochs]
    assert len(SEEN) == sum(t.hyperparameters.values["tuner/epochs"] for t in trials)


def test_a_tuner_objective_other_than_the_studys_does_not_take_its_parameters(tmp_path,
                                                                               image_folder):
    """The study judges by val_weighted_loss with its class weights; a tuner judging by
    val_macro_f1 gets that objective's own (none), not the study's."""
    from types import SimpleNamespace

    from tlsearch.keras_tuner import TransferHyperModel
    from tlsearch.train.pipeline import Schedule

    path = write_study(tmp_path / "s.yaml", objective="val_weighted_loss")
    hm = TransferHyperModel.from_yaml(path)
    hm._prep = SimpleNamespace(schedule=Schedule(objective="val_weighted_loss",
                                                 objective_params={"class_weight": [1, 2, 3]}))
    saver = SimpleNamespace(objective=SimpleNamespace(name="val_macro_f1"))
    assert hm._schedule(None, [saver]).objective_params is None
    same = SimpleNamespace(objective=SimpleNamespace(name="val_weighted_loss"))
    assert hm._schedule(None, [same]).objective_params == {"class_weight": [1, 2, 3]}


def test_the_hypermodel_loads_its_inputs_without_any_study_storage(hypermodel, monkeypatch):
    """KerasTuner needs the study file's data and backbones, not an Optuna study: none is
    created or loaded, not even a throw-away one in memory."""
    import optuna

    def refused(*a, **k):
        raise AssertionError("a study storage was opened")

    monkeypatch.setattr(optuna, "create_study", refused)
    monkeypatch.setattr(optuna, "load_study", refused)
    inputs = hypermodel.prepared
    assert inputs.data.class_names == ["circle", "square", "stripes"]
    assert inputs.caps == {"tiny_cnn": 4}
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    assert model.output_shape[-1] == 3 and 1 <= hp.get("unfreeze_blocks") <= 2
