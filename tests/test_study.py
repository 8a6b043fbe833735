"""`tlsearch run` end to end on a tiny twin: storage, pruning, resume, artifacts, failures."""

from __future__ import annotations

import hashlib

import optuna
import pytest
from optuna.trial import TrialState

from conftest import write_study
from tlsearch.cli import main
from tlsearch.config import load_config
from tlsearch.errors import NonFiniteLoss


def stored(path):
    cfg = load_config(path)
    return optuna.load_study(study_name=cfg.name, storage=cfg.storage_url), cfg


def test_run_persists_trials_steps_and_artifacts(tmp_path, image_folder, capsys):
    study_file = write_study(tmp_path / "s.yaml", n_trials=2,
                             search={"unfreeze_blocks": 2, "head_width": 8})
    assert main(["run", str(study_file)]) == 0
    out = capsys.readouterr().out
    assert "best trial" in out and "optuna-dashboard" in out
    study, cfg = stored(study_file)
    trials = study.get_trials(states=[TrialState.COMPLETE])
    assert len(trials) == 2
    for t in trials:
        assert sorted(t.intermediate_values) == [0, 1, 2, 3]  # one step count across both stages
        assert [h["stage"] for h in t.user_attrs["tlsearch.history"]] == [1, 1, 2, 2]
        info = t.user_attrs["tlsearch.artifact"]
        blob = (cfg.artifact_dir / info["id"]).read_bytes()
        assert len(blob) == info["size"] and hashlib.sha256(blob).hexdigest() == info["sha256"]
        assert t.value == min(h["val_loss"] for h in t.user_attrs["tlsearch.history"])
    assert study.user_attrs["tlsearch.classes"] == ["circle", "square", "stripes"]


def test_rerun_reaches_n_trials_in_total(tmp_path, image_folder):
    study_file = write_study(tmp_path / "s.yaml", n_trials=2)
    assert main(["run", str(study_file)]) == 0
    assert main(["run", str(study_file), "--n-trials", "3"]) == 0
    assert main(["run", str(study_file), "--n-trials", "3"]) == 0  # nothing left to do
    study, _ = stored(study_file)
    assert len(study.trials) == 3
    assert [t.number for t in study.trials] == [0, 1, 2]


class PruneAtStep:
    """Prunes every trial at one step: deterministic, unlike the median pruner."""

    def __init__(self, step: int) -> None:
        self.step = step

    def prune(self, study, trial) -> bool:
        return trial.last_step is not None and trial.last_step >= self.step


def test_a_trial_is_really_pruned_in_stage2(tmp_path, image_folder, monkeypatch):
    monkeypatch.setattr("tlsearch.runner.prepare.make_pruner", lambda cfg: PruneAtStep(2))
    study_file = write_study(tmp_path / "s.yaml", n_trials=1, search={"unfreeze_blocks": 1})
    assert main(["run", str(study_file)]) == 0
    study, _ = stored(study_file)
    (t,) = study.trials
    assert t.state == TrialState.PRUNED
    assert sorted(t.intermediate_values) == [0, 1, 2]  # stopped at the first stage-2 step


def test_changed_search_space_is_refused_and_nothing_written(tmp_path, image_folder, capsys):
    study_file = write_study(tmp_path / "s.yaml", n_trials=1)
    assert main(["run", str(study_file)]) == 0
    write_study(study_file, n_trials=2, search={"head_width": [8, 32]})
    capsys.readouterr()
    assert main(["run", str(study_file)]) == 2
    err = capsys.readouterr().err
    assert "head_width: was one of [8, 16], now one of [8, 32]" in err and "new `name`" in err
    study, _ = stored(study_file)
    assert len(study.trials) == 1


def test_corrupt_image_is_named_before_any_storage(tmp_path, image_folder, capsys):
    bad = image_folder / "circle" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    study_file = write_study(tmp_path / "s.yaml")
    assert main(["run", str(study_file)]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "skip_bad_files" in err
    assert not (tmp_path / "tiny.db").exists()
    write_study(study_file, n_trials=1, data={"skip_bad_files": True})
    assert main(["run", str(study_file)]) == 0


def test_failed_trial_does_not_stop_the_study(tmp_path, image_folder, monkeypatch):
    from tlsearch.search import study as st

    real = st.run_trial
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise NonFiniteLoss("the loss became nan at step 0")
        return real(*a, **k)

    monkeypatch.setattr(st, "run_trial", flaky)
    study_file = write_study(tmp_path / "s.yaml", n_trials=2)
    assert main(["run", str(study_file)]) == 0
    study, _ = stored(study_file)
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert "nan" in study.trials[0].user_attrs["tlsearch.failure"]


def test_consecutive_failures_stop_the_study(tmp_path, image_folder, monkeypatch, capsys):
    def always(*a, **k):
        raise NonFiniteLoss("the loss became nan at step 0")

    monkeypatch.setattr("tlsearch.search.study.run_trial", always)
    study_file = write_study(tmp_path / "s.yaml", n_trials=10,
                             training={"max_consecutive_failures": 3})
    assert main(["run", str(study_file)]) == 1
    assert "3 trials failed in a row" in capsys.readouterr().err
    study, _ = stored(study_file)
    assert len(study.trials) == 3
