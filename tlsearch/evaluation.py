"""A model's predictions on labelled data, summed up the way a user reads them: loss, accuracy,
macro F1 and AUC, per-class precision/recall/F1, and the study's own objective."""

from __future__ import annotations

from typing import Any

import numpy as np

from tlsearch.metrics import macro_auc, weighted_crossentropy
from tlsearch.params import compute

__all__ = ["evaluate_probabilities"]


def evaluate_probabilities(probs: np.ndarray, y: np.ndarray, classes: list[str], *,
                           objective: str | None = None, objective_params: dict | None = None,
                           labels: np.ndarray | None = None) -> dict[str, Any]:
    """Loss, accuracy, macro AUC, per-class precision/recall/F1 (and the study's objective).

    ``labels`` are the predicted classes when a decision rule other than the most probable class
    applies (a threshold chosen on validation)."""
    import warnings

    from sklearn.metrics import precision_recall_fscore_support

    pred = probs.argmax(axis=1) if labels is None else labels
    k = len(classes)
    p, r, f, n = precision_recall_fscore_support(y, pred, labels=list(range(k)), zero_division=0)
    with warnings.catch_warnings():  # a class absent from the data: its AUC is skipped, as said
        warnings.simplefilter("ignore")
        auc = macro_auc(probs, y)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "loss": float(weighted_crossentropy(probs, y)),
        "accuracy": float(np.mean(pred == y)),
        "macro_f1": float(np.mean(f)),
        "macro_auc": float(auc),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                          "support": int(n[i])} for i, c in enumerate(classes)},
    }
    if objective is not None:
        out[objective.removeprefix("val_")] = float(compute(objective, probs, y,
                                                            objective_params).value)
    return out
