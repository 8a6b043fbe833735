"""Pruning judges the curve the trial is valued on (its best epoch over both stages).

Each measured case of the issue is a study built through Optuna's API, its trials carrying
``STAGE2_ATTR`` as the objective writes it, judged by the public ``StageAwarePruner`` around
``MedianPruner(n_startup_trials=3, n_warmup_steps=2)`` with stage 2 starting at step 5.
"""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from tlsearch.search.stage_pruning import LAST_STEP_ATTR, STAGE2_ATTR, StageAwarePruner

S2 = 5  # stage 2 starts at step 5 (5 stage-1 epochs)
LAST = 9  # 5 + 5 epochs


def _study(direction: str = "minimize", inner=None) -> optuna.Study:
    inner = inner or optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    return optuna.create_study(direction=direction, pruner=StageAwarePruner(inner))


def _add(study: optuna.Study, curve: list[float], stage2_at: int | None = S2,
         state: TrialState = TrialState.COMPLETE, maximize: bool = False) -> None:
    """A finished trial: ``curve`` on steps 0.., its value its best epoch (as tlsearch returns)."""
    attrs = {} if stage2_at is None else {STAGE2_ATTR: stage2_at}
    best = max(curve) if maximize else min(curve)
    study.add_trial(create_trial(
        state=state, value=best if state == TrialState.COMPLETE else None,
        params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
        intermediate_values=dict(enumerate(curve)), user_attrs=attrs))


def _run(study: optuna.Study, curve: list[float], stage2_at: int | None = S2,
         last: int | None = LAST) -> int | None:
    """Reports ``curve`` as the objective does; the step where the trial is pruned, or None."""
    trial = study.ask()
    if last is not None:
        trial.set_user_attr(LAST_STEP_ATTR, last)
    for step, v in enumerate(curve):
        if stage2_at is not None and step >= stage2_at and STAGE2_ATTR not in trial.user_attrs:
            trial.set_user_attr(STAGE2_ATTR, step)
        trial.report(v, step)
        if trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return step
    study.tell(trial, min(curve))
    return None


#: fine-tuning trials that completed: stage 1 ends near 0.6, stage 2 reaches 0.46
DONE = [0.9, 0.8, 0.7, 0.65, 0.6, 0.52, 0.5, 0.48, 0.47, 0.46]


def test_trial_leading_the_study_is_not_pruned_at_the_dip_after_unfreezing():
    """Completed trials' best 0.46; a trial whose stage-1 best is 0.30 (already the study's best)
    and whose first stage-2 epoch is 0.56 goes on, and completes with its best epoch."""
    study = _study(inner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0))
    for k in range(3):
        _add(study, [v + 0.001 * k for v in DONE])
    curve = [0.7, 0.5, 0.4, 0.33, 0.30, 0.56, 0.50, 0.45, 0.40, 0.38]
    assert _run(study, curve) is None
    assert study.trials[-1].state == TrialState.COMPLETE
    assert study.best_trial.number == 3 and study.best_value == pytest.approx(0.30)


def test_same_rule_for_a_maximised_objective():
    study = _study("maximize", optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0))
    for k in range(3):
        _add(study, [1 - v - 0.001 * k for v in DONE], maximize=True)
    curve = [0.3, 0.5, 0.6, 0.67, 0.70, 0.44, 0.5, 0.55, 0.6, 0.62]
    assert _run(study, curve) is None


def test_trial_behind_the_best_is_still_pruned():
    """The rule spares a trial that leads, not every trial: one that never reaches the completed
    trials' running best is pruned once warm-up (stage-2 epochs) is over."""
    study = _study()
    for k in range(3):
        _add(study, [v + 0.001 * k for v in DONE])
    curve = [0.9, 0.85, 0.8, 0.78, 0.75, 0.8, 0.78, 0.76, 0.75, 0.74]
    assert _run(study, curve) == S2 + 2  # the third stage-2 epoch: warm-up counts stage 2


def test_startup_counts_only_trials_with_stage2_values():
    """3 frozen-only trials and 1 fine-tuning trial completed: the next fine-tuning trial is not
    compared with that single curve."""
    study = _study()
    for k in range(3):  # frozen-only: no stage 2, their best 0.45
        _add(study, [0.8, 0.6, 0.5, 0.47, 0.45 + 0.001 * k], stage2_at=None)
    _add(study, DONE)
    curve = [0.9, 0.85, 0.8, 0.78, 0.75, 0.8, 0.78, 0.76, 0.75, 0.74]
    assert _run(study, curve) is None
    # and once 3 trials have stage-2 values, the same curve is pruned
    _add(study, DONE)
    _add(study, DONE)
    assert _run(study, curve) == S2 + 2


def test_warmup_counts_stage2_epochs_for_a_users_own_pruner():
    """A user's wrapped pruner reads ``n_warmup_steps`` from the trial's first stage-2 epoch, and
    compares trials at the same stage-2 epoch whatever their stage-1 length."""
    inner = optuna.pruners.PercentilePruner(50.0, n_startup_trials=1, n_warmup_steps=2)
    study = _study(inner=inner)
    _add(study, [0.9, 0.8, 0.5, 0.45, 0.44, 0.43], stage2_at=2)  # a shorter stage 1
    curve = [0.9, 0.85, 0.8, 0.78, 0.75, 0.8, 0.78, 0.76, 0.75, 0.74]
    assert _run(study, curve) == S2 + 2


def test_last_epoch_is_never_pruned():
    """A trial at its last planned epoch completes with its best epoch (it spent the compute)."""
    study = _study(inner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    _add(study, DONE)
    curve = [0.9, 0.85, 0.8, 0.78, 0.75, 0.7]  # stage 2 is a single epoch, and behind
    assert _run(study, curve, last=S2) is None
    assert study.trials[-1].state == TrialState.COMPLETE
    assert _run(study, curve + [0.7], last=S2 + 1) == S2  # not the last epoch: pruned


def test_trial_without_stage2_is_no_competitor_nor_pruned():
    study = _study(inner=optuna.pruners.MedianPruner(n_startup_trials=0, n_warmup_steps=0))
    _add(study, DONE)
    assert _run(study, [0.9, 0.9, 0.9, 0.9, 0.9], stage2_at=None, last=4) is None


@pytest.mark.slow
def test_claims_hold_on_a_real_study(tmp_path):
    """A real study of the tiny twin, pruned by the default wrapper around a median pruner that
    starts at once: on the intermediate values it stores, no trial was pruned while its running
    best was as good as the best trial completed before it, none at its last epoch, none before
    its first stage-2 epoch plus warm-up; and the summary's pruning figures match the trials."""
    from tests.conftest import make_image_folder, write_study
    from tlsearch.cli import main
    from tlsearch.search.attrs import ATTR
    from tlsearch.search.stage_pruning import pruning_cost

    make_image_folder(tmp_path / "images", per_class=8)
    path = write_study(tmp_path / "s.yaml", n_trials=8,
                       pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
                       training={"stage1_epochs": 2, "stage2_epochs": 3, "batch_size": 8},
                       search={"unfreeze_blocks": {"low": 1, "high": 2}, "head_width": [8, 16],
                               "lr_stage1": {"low": 3e-2, "high": 1e-1, "log": True},
                               "lr_stage2": {"low": 1e-4, "high": 3e-2, "log": True}})
    assert main(["run", str(path), "--quiet"]) == 0
    trials = optuna.load_study(study_name="tiny",
                               storage=f"sqlite:///{tmp_path / 'tiny.db'}").trials
    assert len(trials) == 8
    for t in trials:
        assert t.user_attrs[LAST_STEP_ATTR] == 4
        if t.state != TrialState.PRUNED:
            continue
        step = max(t.intermediate_values)
        assert t.user_attrs[STAGE2_ATTR] == 2 <= step < 4  # stage 2, not its last epoch
        before = [u.value for u in trials if u.number < t.number and u.state == TrialState.COMPLETE]
        assert before and min(t.intermediate_values.values()) > min(before)
        assert len(t.user_attrs[ATTR["history"]]) == step + 1
    assert pruning_cost(trials)["pruned"] == sum(t.state == TrialState.PRUNED for t in trials)
