"""Stage-aware pruning: by default no trial is pruned before its first stage-2 epoch, and stage-2
epochs are compared with stage-2 epochs; ``pruner.prune_stage1: true`` prunes during stage 1.
(What the wrapper judges, the running best, is in test_pruning_judgement.py.)"""

from __future__ import annotations

import optuna
import pytest

from tests.conftest import write_study
from tlsearch.config import parse_config
from tlsearch.search import samplers
from tlsearch.search.attrs import ATTR
from tlsearch.search.stage_pruning import STAGE2_ATTR, StageAwarePruner


class AlwaysPrune(optuna.pruners.BasePruner):
    def __init__(self) -> None:
        self.asked: list[int] = []

    def prune(self, study, trial) -> bool:
        self.asked.append(trial.last_step)
        return True


def _objective(stage2_at: int | None, values: list[float]):
    """Reports ``values`` on steps 0.., recording where stage 2 starts as the pipeline does."""

    def objective(trial: optuna.Trial) -> float:
        for step, v in enumerate(values):
            if stage2_at is not None and step >= stage2_at and STAGE2_ATTR not in trial.user_attrs:
                trial.set_user_attr(STAGE2_ATTR, step)
            trial.report(v, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return min(values)

    return objective


def test_never_prunes_before_stage2_then_delegates():
    inner = AlwaysPrune()
    study = optuna.create_study(pruner=StageAwarePruner(inner))
    study.optimize(_objective(3, [0.9, 0.8, 0.7, 0.6, 0.5]), n_trials=1)
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.PRUNED
    assert max(t.intermediate_values) == 3          # stage 1 (steps 0-2) survived
    assert inner.asked == [0]      # asked only from the stage-2 start on, as stage-2 epoch 0


def test_trial_without_stage2_is_never_pruned():
    inner = AlwaysPrune()
    study = optuna.create_study(pruner=StageAwarePruner(inner))
    study.optimize(_objective(None, [0.9, 0.8, 0.7]), n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
    assert inner.asked == []


def test_unwrapped_pruner_prunes_in_stage1():
    study = optuna.create_study(pruner=AlwaysPrune())
    study.optimize(_objective(3, [0.9, 0.8, 0.7, 0.6, 0.5]), n_trials=1)
    assert max(study.trials[0].intermediate_values) == 0


def test_median_compares_stage2_steps_only():
    """A trial whose stage 1 was poor and whose stage 2 is worse than the others' stage 2 is
    pruned stage-aware at its first stage-2 epoch; the plain median pruner prunes it in stage 1."""

    def run(pruner) -> int | None:
        study = optuna.create_study(pruner=pruner)
        for _ in range(3):  # competitors: stage 2 reaches 0.5
            study.optimize(_objective(2, [1.0, 0.6, 0.5, 0.5]), n_trials=1)
        study.optimize(_objective(2, [0.8, 0.8, 0.9, 0.9, 0.9]), n_trials=1)
        return study.trials[-1].last_step

    median = dict(n_startup_trials=1, n_warmup_steps=0)
    assert run(optuna.pruners.MedianPruner(**median)) == 1   # 0.8 against the others' 0.6
    assert run(StageAwarePruner(optuna.pruners.MedianPruner(**median))) == 2


def test_hyperband_inside_the_wrapper_runs():
    study = optuna.create_study(pruner=StageAwarePruner(optuna.pruners.HyperbandPruner(
        min_resource=1, max_resource=6, reduction_factor=3)))
    for i in range(4):
        study.optimize(_objective(2, [1.0, 0.9, 0.8 - i * 0.1, 0.7, 0.6, 0.5]), n_trials=1)
    assert all(max(t.intermediate_values) >= 2 for t in study.trials)


@pytest.mark.parametrize("prune_stage1, wrapped", [(False, True), (True, False)])
def test_make_pruner_wraps_by_default(tmp_path, prune_stage1, wrapped):
    import yaml

    raw = yaml.safe_load(write_study(tmp_path / "s.yaml", pruner={
        "type": "median", "prune_stage1": prune_stage1}).read_text())
    p = samplers.make_pruner(parse_config(raw, base_dir=tmp_path))
    assert isinstance(p, StageAwarePruner) == wrapped


class PruneFrom(optuna.pruners.BasePruner):
    def __init__(self, step: int) -> None:
        self.step = step

    def prune(self, study, trial) -> bool:
        return (trial.last_step or 0) >= self.step


def _run_study(tmp_path, monkeypatch, unfreeze, n_trials=2, stage2_epochs=2, args=("--quiet",),
               inner=None, **pruner) -> list:
    from tests.conftest import make_image_folder
    from tlsearch.cli import main

    if not (tmp_path / "images").exists():
        make_image_folder(tmp_path / "images", per_class=8)
    name = f"tiny{unfreeze}"
    study = write_study(tmp_path / f"{name}.yaml", name=name, n_trials=n_trials,
                        pruner={"type": "median", "n_startup_trials": 0, "n_warmup_steps": 0,
                                **pruner},
                        search={"unfreeze_blocks": unfreeze},
                        training={"stage1_epochs": 2, "stage2_epochs": stage2_epochs,
                                  "batch_size": 8})
    monkeypatch.setattr(samplers, "_optuna_pruner", lambda cfg, *a: inner or AlwaysPrune())
    assert main(["run", str(study), *args]) == 0
    return optuna.load_study(study_name=name,
                             storage=f"sqlite:///{tmp_path / (name + '.db')}").trials


def test_study_default_prunes_only_from_stage2(tmp_path, monkeypatch):
    with_stage2 = _run_study(tmp_path, monkeypatch, 1)
    head_only = _run_study(tmp_path, monkeypatch, 0, n_trials=1)
    for t in with_stage2:
        assert t.state == optuna.trial.TrialState.PRUNED
        assert t.user_attrs[STAGE2_ATTR] == 2
        assert sorted(t.intermediate_values) == [0, 1, 2]   # pruned at its first stage-2 step
    for t in head_only:  # no stage 2: never pruned by default
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert sorted(t.intermediate_values) == [0, 1]
        assert STAGE2_ATTR not in t.user_attrs


def test_study_prune_stage1_prunes_at_once(tmp_path, monkeypatch):
    trials = _run_study(tmp_path, monkeypatch, 1, prune_stage1=True)
    assert trials and all(t.state == optuna.trial.TrialState.PRUNED for t in trials)
    assert all(sorted(t.intermediate_values) == [0] for t in trials)


def test_study_never_prunes_a_trial_at_its_last_epoch(tmp_path, monkeypatch):
    """Stage 2 of one epoch: the first stage-2 epoch is the trial's last, so even a pruner that
    always prunes lets the trial complete with its best epoch and weights."""
    trials = _run_study(tmp_path, monkeypatch, 1, stage2_epochs=1)
    for t in trials:
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert t.user_attrs[ATTR["last_step"]] == 2 == max(t.intermediate_values)
        assert t.user_attrs[ATTR["best_step"]] in (0, 1, 2)


def test_study_prune_stage1_spares_the_last_epoch_too(tmp_path, monkeypatch):
    """Unwrapped (prune_stage1), a pruner that prunes from step 2 on meets the trial's last epoch
    (2 + 1 epochs): the pipeline does not ask it there."""
    trials = _run_study(tmp_path, monkeypatch, 1, stage2_epochs=1, prune_stage1=True,
                        inner=PruneFrom(2))
    assert trials and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(max(t.intermediate_values) == 2 for t in trials)


def test_summary_says_when_most_trials_were_pruned(tmp_path, monkeypatch, capsys):
    import json

    _run_study(tmp_path, monkeypatch, 1, n_trials=2, args=("--json",))
    summary = [json.loads(line) for line in capsys.readouterr().out.splitlines()
               if line.startswith("{")][-1]
    p = summary["pruning"]
    assert p["pruned"] == 2 and p["finished"] == 2
    assert 0 < p["pruned_stage2_seconds"] <= p["stage2_seconds"]
    _run_study(tmp_path, monkeypatch, 1, n_trials=3, args=())  # one more trial, plain output
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("pruned:"))
    assert "3 of 3 finished trials were pruned" in line and "s of stage-2 training" in line
    assert "`pruner:`" in line and "n_warmup_steps" in line
