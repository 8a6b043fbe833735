"""What tlsearch stores on studies and trials (Optuna user attributes), and reading it back.

Every reader (export, report, dashboard, resume) goes through these names, so the stored layout
has one home.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from tlsearch.params import TrialParams

__all__ = ["ATTR", "WORKER_ATTR", "FINISHED", "trial_params"]

#: names of the user attributes tlsearch stores on studies and trials
ATTR = {
    "space": "tlsearch.space",
    "classes": "tlsearch.classes",
    "modality": "tlsearch.modality",
    "config": "tlsearch.config",
    "data": "tlsearch.data",
    "params": "tlsearch.params",
    "history": "tlsearch.history",
    "best_step": "tlsearch.best_step",
    "best_stage": "tlsearch.best_stage",
    "failure": "tlsearch.failure",
    "seconds": "tlsearch.seconds",
    "cached": "tlsearch.cached",
    "meaning": "tlsearch.meaning",
    "caps": "tlsearch.caps",
    "test": "tlsearch.test",
    "fences": "tlsearch.fences",
    "prescreen": "tlsearch.prescreen",
    "mlflow_run": "tlsearch.mlflow_run",
    "stage2_step": "tlsearch.stage2_step",
    "stopped": "tlsearch.stopped",
    "target": "tlsearch.target",  # study: the fingerprint of `data.target`
    "domain": "tlsearch.domain",  # trial: its domain-adaptation criterion and report
    "value_se": "tlsearch.value_se",  # trial: the standard error of its value (validation)
}

#: the user attribute naming the process that runs a trial: ``host:pid:start``
WORKER_ATTR = "tlsearch.worker"

#: the states of a trial that counts towards ``n_trials``
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def trial_params(frozen: optuna.trial.FrozenTrial) -> TrialParams:
    """The full parameters of a stored trial (searched and fixed)."""
    return TrialParams.from_dict(frozen.user_attrs[ATTR["params"]])
