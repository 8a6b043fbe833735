"""What tlsearch stores on studies and trials (Optuna user attributes), and reading it back.

Every reader (export, report, dashboard, resume) goes through these names, so the stored layout
has one home.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from tlsearch.params import OBJECTIVES, TrialParams, objective_params, positive_index

__all__ = ["ATTR", "WORKER_ATTR", "FINISHED", "trial_params", "study_objective_params",
           "test_evaluations"]

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
    # study: what its trials computed (:func:`tlsearch.search.resume.study_fingerprint`), under
    # the name it was first stored with, so that studies in users' databases still resume
    "fingerprint": "tlsearch.meaning",
    "caps": "tlsearch.caps",
    "test": "tlsearch.test",  # study: the latest evaluation on `data.test`
    "tests": "tlsearch.tests",  # study: every evaluation on `data.test`, oldest first
    # study: the objective's parameters as trials are judged (positive class as its index,
    # class weights one per class)
    "objective_params": "tlsearch.objective_params",
    "fences": "tlsearch.fences",
    "prescreen": "tlsearch.prescreen",
    "mlflow_run": "tlsearch.mlflow_run",
    "study_uid": "tlsearch.study_uid",  # study: its random id, naming its tracker runs/folders
    "stage2_step": "tlsearch.stage2_step",
    "last_step": "tlsearch.last_step",  # trial: the global step of its last planned epoch
    "stopped": "tlsearch.stopped",
    "target": "tlsearch.target",  # study: the fingerprint of `data.target`
    "domain": "tlsearch.domain",  # trial: its domain-adaptation criterion and report
    "value_se": "tlsearch.value_se",  # trial: the standard error of its value (validation)
    # study: trial number -> its refit on training + validation data (tlsearch.export.refit)
    "refits": "tlsearch.refits",
    # study: trial number -> the artifact of its validation probabilities at its best epoch
    "val_probs": "tlsearch.val_probs",
    "ensemble": "tlsearch.ensemble",  # study: the latest ensemble exported (tlsearch.export.ensemble)
}

#: the user attribute naming the process that runs a trial: ``host:pid:start``
WORKER_ATTR = "tlsearch.worker"

#: the states of a trial that counts towards ``n_trials``
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def trial_params(frozen: optuna.trial.FrozenTrial) -> TrialParams:
    """The full parameters of a stored trial (searched and fixed)."""
    return TrialParams.from_dict(frozen.user_attrs[ATTR["params"]])


def study_objective_params(cfg: Any, study: optuna.Study) -> dict:
    """The objective's parameters the study's trials were judged with: as stored when the study
    was prepared, or, for a study stored before they were, resolved from the study file and the
    stored classes (``class_weight: balanced`` then stays a word, weighed on the labels judged)."""
    stored = study.user_attrs.get(ATTR["objective_params"])
    if stored is not None:
        return dict(stored)
    params = objective_params(OBJECTIVES[cfg.objective], cfg.objective_params)
    classes = list(study.user_attrs.get(ATTR["classes"], []))
    if "positive" in params and classes:
        params["positive"] = positive_index(params["positive"], classes)
    return params


def test_evaluations(study: optuna.Study) -> list[dict]:
    """Every evaluation of the study on its held-out test set (``data.test``), oldest first; a
    study stored before the history was kept has its single one."""
    history = study.user_attrs.get(ATTR["tests"])
    if history is not None:
        return list(history)
    single = study.user_attrs.get(ATTR["test"])
    return [single] if single else []
