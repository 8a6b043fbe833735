"""Pruning that waits for stage 2: the default around the study file's Optuna pruner.

Stage-1 curves (a head on frozen features) do not predict what fine-tuning gains, and a stage-1
epoch on cached features costs well under a second: pruning there saves almost nothing and kills
the trials that would win in stage 2. :class:`StageAwarePruner` therefore never prunes a trial
before its first stage-2 epoch, and from then on asks the wrapped pruner with every trial seen
through its stage-2 steps only: the running trial's stage-2 values are compared with other trials'
stage-2 values at the same global step (steps stay one count across both stages, as Optuna sees
them).

Where stage 2 starts is recorded on each trial (:data:`STAGE2_ATTR`, the global step of its first
stage-2 epoch) by the objective as the trial enters stage 2. A trial that never enters stage 2
(``unfreeze_blocks: 0``) has no stage-2 steps: it is never pruned, and it is no competitor for
those that do. ``pruner.prune_stage1: true`` uses the wrapped pruner on whole curves instead.
"""

from __future__ import annotations

import copy
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from tlsearch.search.attrs import ATTR

__all__ = ["StageAwarePruner", "STAGE2_ATTR", "stage2_only"]

#: the trial user attribute holding the global step of the trial's first stage-2 epoch
STAGE2_ATTR = ATTR["stage2_step"]


def stage2_only(trial: FrozenTrial) -> FrozenTrial:
    """``trial`` with only its stage-2 intermediate values (none if it has no stage 2)."""
    start = trial.user_attrs.get(STAGE2_ATTR)
    view = copy.copy(trial)
    values = trial.intermediate_values
    view.intermediate_values = {} if start is None else \
        {s: v for s, v in values.items() if s >= int(start)}
    return view


class _Stage2Study:
    """A study as the wrapped pruner should see it: every trial through its stage-2 steps."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        return [stage2_only(t) for t in self._study.get_trials(deepcopy=False, states=states)]

    def _get_trials(self, deepcopy: bool = True, states: Any = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        return self.get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class StageAwarePruner(optuna.pruners.BasePruner):
    """Never prunes before a trial's first stage-2 epoch; then delegates to ``inner``, comparing
    stage-2 steps with stage-2 steps (see the module's docstring)."""

    def __init__(self, inner: optuna.pruners.BasePruner) -> None:
        self.inner = inner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        start = trial.user_attrs.get(STAGE2_ATTR)
        step = trial.last_step
        if start is None or step is None or step < int(start):
            return False
        return self.inner.prune(_Stage2Study(study), stage2_only(trial))  # type: ignore[arg-type]
