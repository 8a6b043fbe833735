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

    uid = study.user_attrs["tlsearch.study_uid"]
    assert sorted(r.info.run_name for r in runs.values()) == [f"tiny-{uid[:8]}-trial-0",
                                                             f"tiny-{uid[:8]}-trial-1"]
    folders = sorted(str(p.relative_to(tmp_path / "tb")) for p in (tmp_path / "tb").glob("*/*"))
    assert folders == [f"tiny-{uid[:8]}/trial-0000", f"tiny-{uid[:8]}/trial-0001"]
    seen: dict[str, list[int]] = {}
    notes = []
    for f in (tmp_path / "tb" / folders[0]).glob("events.out.tfevents.*"):
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


def _runs_and_folders(uri: str, tb):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("shared")
    runs = client.search_runs([exp.experiment_id])
    folders = sorted(str(p.relative_to(tb)) for p in tb.glob("*/trial-*"))
    return runs, folders


def test_two_studies_on_one_file_and_a_rerun_never_share_a_run_or_a_folder(
        tmp_path, image_folder, monkeypatch):
    """Two of the user's Optuna studies (NSGA-II and random) driven by tlsearch.objective on one
    study file, then one of them deleted and run again under its name: every trial has its own
    MLflow run name and TensorBoard folder, named by the Optuna study (name and id) and trial."""
    pytest.importorskip("mlflow", reason="MLflow is an extra: pip install 'tlsearch[mlflow]'")
    import tlsearch

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    path = write_study(tmp_path / "s.yaml", training={"stage1_epochs": 1, "stage2_epochs": 0},
                       search={"unfreeze_blocks": 0, "head_width": [8]},
                       tracking={"mlflow": {"tracking_uri": uri, "experiment": "shared"},
                                 "tensorboard": {"log_dir": "tb"}})
    cfg = tlsearch.load_config(path)
    storage = f"sqlite:///{tmp_path / 'own.db'}"
    objective = tlsearch.objective(path)  # one objective, as a user reuses it

    def optimize(name: str, sampler: optuna.samplers.BaseSampler) -> tuple[str, str, str]:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                    direction=cfg.direction)
        study.optimize(objective, n_trials=1)
        # read now: SQLite gives a deleted study's number to the next one created
        return name, study.user_attrs["tlsearch.study_uid"], \
            study.trials[0].user_attrs["tlsearch.mlflow_run"]

    made = [optimize("nsga", optuna.samplers.NSGAIISampler(seed=0)),
            optimize("random", optuna.samplers.RandomSampler(seed=0))]
    optuna.delete_study(study_name="random", storage=storage)
    made.append(optimize("random", optuna.samplers.RandomSampler(seed=0)))

    assert len({uid for _, uid, _ in made}) == 3  # the rerun under the same name is another study
    runs, folders = _runs_and_folders(uri, tmp_path / "tb")
    names = sorted(r.info.run_name for r in runs)
    assert len(names) == 3 and len(set(names)) == 3, names
    for name, uid, run_id in made:
        run = next(r for r in runs if r.info.run_id == run_id)
        assert run.info.run_name == f"{name}-{uid[:8]}-trial-0"
        assert run.data.tags["tlsearch.study"] == name
        assert run.data.tags["tlsearch.study_uid"] == uid
        # each study tags its own best: one run per study
        assert run.data.tags["tlsearch.best"] == "true"
    assert folders == sorted(f"{name}-{uid[:8]}/trial-0000" for name, uid, _ in made)
