"""Experiment tracking: an MLflow run per trial (offline, on a file store) and TensorBoard logs."""

from __future__ import annotations

import sys

import optuna
import pytest

from conftest import write_study
from tlsearch.cli import main


def test_mlflow_run_per_trial_and_tensorboard_logs(tmp_path, image_folder, monkeypatch):
    pytest.importorskip("mlflow", reason="MLflow is an extra: pip install 'tlsearch[mlflow]'")
    from mlflow import MlflowClient

    # MLflow 3 refuses a file store unless told; a real deployment uses a server or a database
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    path = write_study(tmp_path / "s.yaml", n_trials=2, search={"unfreeze_blocks": 1},
                       tracking={"mlflow": {"tracking_uri": uri, "experiment": "pets"},
                                 "tensorboard": {"log_dir": "tb"}})
    assert main(["run", str(path)]) == 0

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny.db'}")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("pets")
    runs = {r.data.tags["tlsearch.trial"]: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == ["0", "1"]  # one run per trial
    for t in study.trials:
        run = runs[str(t.number)]
        assert t.user_attrs["tlsearch.mlflow_run"] == run.info.run_id
        assert run.info.status == "FINISHED"
        assert float(run.data.params["lr_stage1"]) == pytest.approx(t.params["lr_stage1"])
        assert run.data.params["backbone"] == "tiny_cnn"
        val_loss = client.get_metric_history(run.info.run_id, "val_loss")
        assert [m.step for m in val_loss] == [0, 1, 2, 3]
        stages = client.get_metric_history(run.info.run_id, "stage")
        assert [(m.step, m.value) for m in stages] == [(0, 1), (1, 1), (2, 2), (3, 2)]
        assert run.data.metrics["value"] == pytest.approx(t.value)
        assert run.data.tags["tlsearch.artifact_sha256"] == t.user_attrs["tlsearch.artifact"]["sha256"]
    best = [n for n, r in runs.items() if r.data.tags.get("tlsearch.best") == "true"]
    assert best == [str(study.best_trial.number)]

    import tensorflow as tf

    folders = sorted(p.name for p in (tmp_path / "tb").iterdir())
    assert folders == ["trial-0000", "trial-0001"]
    seen: dict[str, list[int]] = {}
    notes = []
    for f in (tmp_path / "tb" / "trial-0000").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(f)):
            for v in event.summary.value:
                seen.setdefault(v.tag, []).append(event.step)
                if v.tag == "stage_boundary":
                    notes.append(tf.make_ndarray(v.tensor).item().decode())
    assert seen["val_loss"] == [0, 1, 2, 3] and seen["stage"] == [0, 1, 2, 3]
    assert notes == ["stage 1 starts at step 0", "stage 2 starts at step 2"]


def test_missing_mlflow_is_a_user_error_before_the_study_exists(tmp_path, image_folder,
                                                               monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    path = write_study(tmp_path / "s.yaml",
                       tracking={"mlflow": {"tracking_uri": "sqlite:///mlflow.db"}})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "tracking.mlflow" in err and "tlsearch[mlflow]" in err
    assert not (tmp_path / "tiny.db").exists()


def test_a_tracker_that_fails_mid_study_is_dropped_not_the_trial():
    from tlsearch.search.tracking import Listener, Listeners

    class Broken(Listener):
        def on_epoch(self, trial, record):
            raise ConnectionError("tracking server went away")

    class Counting(Listener):
        def __init__(self):
            self.ends = []

        def on_trial_end(self, trial, state, value):
            self.ends.append((state, value))

    warnings: list[str] = []
    counting = Counting()
    hooks = Listeners([Broken(), counting], warn=warnings.append)

    def objective(trial):
        hooks.epoch(trial, None)
        hooks.epoch(trial, None)
        return 0.5

    study = optuna.create_study()
    study.optimize(hooks.wrap(objective), n_trials=1)
    assert study.trials[0].value == 0.5
    assert len(warnings) == 1 and "went away" in warnings[0]
    assert counting.ends == [("COMPLETE", 0.5)]


def test_tracking_uri_credentials_are_never_shown(tmp_path, capsys):
    path = write_study(tmp_path / "s.yaml", tracking={
        "mlflow": {"tracking_uri": "http://team:s3cret@mlflow.internal:5000"}})
    assert main(["validate", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and "mlflow.internal" in out
