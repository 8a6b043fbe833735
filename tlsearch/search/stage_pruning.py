"""Pruning that judges the curve a trial is valued on: the default around the study file's pruner.

A trial's value is its best epoch over both stages, so a pruner that reads raw stage-2 values
judges something the trial is not valued on: a trial whose stage-1 best already leads the study
would be pruned at the dip right after unfreezing, its value and weights lost.
:class:`StageAwarePruner` therefore judges every trial on its *running best* (the value it would
have if it stopped at that epoch, stage 1 included), and:

- never prunes before the trial's first stage-2 epoch (stage-1 curves do not predict what
  fine-tuning gains, and a cached stage-1 epoch costs well under a second);
- never prunes a trial whose running best is as good as the best completed trial's value
  (in the study's direction);
- never prunes a trial at its last planned epoch (:data:`LAST_STEP_ATTR`): it has spent its
  compute, and completes with its best epoch and weights;
- otherwise asks the wrapped pruner, which sees every trial through its stage-2 epochs only,
  re-indexed so that step ``k`` is the trial's ``k``-th stage-2 epoch: the wrapped pruner's
  ``n_warmup_steps`` count stage-2 epochs, trials are compared at the same stage-2 epoch whatever
  their stage-1 length, and its ``n_startup_trials`` count only trials that have a stage-2 value
  at that epoch (a trial that never fine-tuned is no competitor).

Where stage 2 starts is recorded on each trial (:data:`STAGE2_ATTR`, the global step of its first
stage-2 epoch) by the objective as the trial enters stage 2. A trial that never enters stage 2
(``unfreeze_blocks: 0``) has no stage-2 epochs: it is never pruned. ``pruner.prune_stage1: true``
uses the wrapped pruner on whole raw curves instead.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tlsearch.optuna_adapter import StudyView
from tlsearch.search.attrs import ATTR

__all__ = ["StageAwarePruner", "STAGE2_ATTR", "LAST_STEP_ATTR", "stage2_only", "running_best",
           "stage2_view", "pruning_cost"]

#: the trial user attribute holding the global step of the trial's first stage-2 epoch
STAGE2_ATTR = ATTR["stage2_step"]
#: the trial user attribute holding the global step of the trial's last planned epoch
LAST_STEP_ATTR = ATTR["last_step"]


def stage2_only(trial: FrozenTrial) -> FrozenTrial:
    """``trial`` with only its raw stage-2 intermediate values, at their global steps (none if it
    has no stage 2)."""
    start = trial.user_attrs.get(STAGE2_ATTR)
    view = copy.copy(trial)
    values = trial.intermediate_values
    view.intermediate_values = {} if start is None else \
        {s: v for s, v in values.items() if s >= int(start)}
    return view


def running_best(values: dict[int, float], maximize: bool) -> dict[int, float]:
    """At each step, the best value up to it (NaN epochs skipped): what the trial is worth if it
    stops there, as its value is its best epoch's."""
    steps = sorted(values)
    arr = np.array([values[s] for s in steps], dtype=float)
    best = (np.fmax if maximize else np.fmin).accumulate(arr) if len(arr) else arr
    return {s: float(v) for s, v in zip(steps, best)}


def stage2_view(trial: FrozenTrial, maximize: bool) -> FrozenTrial:
    """``trial`` as the wrapped pruner sees it: its running best at each stage-2 epoch, the
    ``k``-th stage-2 epoch at step ``k`` (no values if it has no stage 2)."""
    start = trial.user_attrs.get(STAGE2_ATTR)
    view = copy.copy(trial)
    if start is None:
        view.intermediate_values = {}
    else:
        curve = running_best(trial.intermediate_values, maximize)
        view.intermediate_values = {s - int(start): v for s, v in curve.items() if s >= int(start)}
    return view


def _stage2_study(study: optuna.Study, step: int, maximize: bool) -> StudyView:
    """A study as the wrapped pruner sees it: every trial that has a stage-2 value at ``step``
    (re-indexed), through :func:`stage2_view`."""

    def view(trials: list[FrozenTrial]) -> list[FrozenTrial]:
        views = (stage2_view(t, maximize) for t in trials)
        return [v for v in views if step in v.intermediate_values]

    return StudyView(study, view)


def _leads(study: optuna.Study, trial: FrozenTrial, maximize: bool) -> bool:
    """Whether the trial's running best is as good as the best completed trial's value."""
    done = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]
    if not done:
        return False
    mine = [v for v in trial.intermediate_values.values() if math.isfinite(v)]
    if not mine:
        return False
    return max(mine) >= max(done) if maximize else min(mine) <= min(done)


class StageAwarePruner(optuna.pruners.BasePruner):
    """Judges each trial on its running best over both stages, from its first stage-2 epoch on,
    never at its last epoch nor while it is as good as the best completed trial; otherwise
    delegates to ``inner`` on stage-2 epochs (see the module's docstring)."""

    def __init__(self, inner: optuna.pruners.BasePruner) -> None:
        self.inner = inner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        start = trial.user_attrs.get(STAGE2_ATTR)
        step = trial.last_step
        if start is None or step is None or step < int(start):
            return False
        last = trial.user_attrs.get(LAST_STEP_ATTR)
        if last is not None and step >= int(last):
            return False
        maximize = study.direction == StudyDirection.MAXIMIZE
        if _leads(study, trial, maximize):
            return False
        view = stage2_view(trial, maximize)
        return bool(self.inner.prune(_stage2_study(study, step - int(start), maximize),  # type: ignore[arg-type]
                                     view))


def pruning_cost(trials: list[FrozenTrial]) -> dict:
    """How many finished trials the pruner stopped, and the stage-2 seconds they had spent
    (from each trial's stored history); trials stopped by ``hard_timeout`` are not counted."""
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    pruned = [t for t in finished if t.state == TrialState.PRUNED
              and ATTR["stopped"] not in t.user_attrs]

    def stage2_seconds(ts: list[FrozenTrial]) -> float:
        return sum(float(r.get("seconds", 0.0)) for t in ts
                   for r in t.user_attrs.get(ATTR["history"], []) if r.get("stage", 1) >= 2)

    return {"finished": len(finished), "pruned": len(pruned),
            "pruned_stage2_seconds": round(stage2_seconds(pruned), 1),
            "stage2_seconds": round(stage2_seconds(finished), 1)}
