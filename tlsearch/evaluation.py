"""A model's predictions on labelled data, summed up the way a user reads them: loss, accuracy,
macro F1 and AUC, per-class precision/recall/F1, and the study's own objective.

The labels are decided by the model's decision rule (:func:`decide`): the most probable class, or,
for a screening objective, the threshold chosen on validation. A screening objective's figure is
what that rule reaches on these data (its sensitivity and specificity both, in
``operating_point``), never a threshold chosen again on these labels: the figure is the one the
exported model, which applies the stored threshold, will show.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from tlsearch.metrics import (apply_threshold, f1_of_labels, macro_auc, rates_of_labels,
                              weighted_crossentropy)
from tlsearch.params import OBJECTIVES, compute, objective_params as _objective_params

__all__ = ["evaluate_probabilities", "decide"]


def decide(probs: np.ndarray, rule: Mapping[str, Any] | None) -> np.ndarray:
    """Predicted class indices by a decision rule as ``metadata.json`` writes it (``argmax``, or
    ``threshold`` on the positive class's probability)."""
    probs = np.asarray(probs)
    if rule and rule.get("rule") == "threshold":
        return apply_threshold(probs, rule["threshold"], rule["positive"])
    return np.argmax(probs, axis=1).astype(np.int64) if len(probs) else np.zeros(0, np.int64)


def evaluate_probabilities(probs: np.ndarray, y: np.ndarray, classes: list[str], *,
                           objective: str | None = None, objective_params: dict | None = None,
                           labels: np.ndarray | None = None,
                           decision: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Loss, accuracy, macro AUC, per-class precision/recall/F1 (and the study's objective).

    ``decision`` is the model's decision rule (see :func:`decide`); ``labels`` the predicted
    classes when they were decided elsewhere (they win over ``decision``). For a screening
    objective, its figure and ``operating_point`` are those of these labels."""
    import warnings

    from sklearn.metrics import precision_recall_fscore_support

    pred = decide(probs, decision) if labels is None else np.asarray(labels)
    k = len(classes)
    p, r, f, n = precision_recall_fscore_support(y, pred, labels=list(range(k)), zero_division=0)
    with warnings.catch_warnings():  # a class absent from the data: its AUC is skipped, as said
        warnings.simplefilter("ignore")
        auc = macro_auc(probs, y)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "loss": float(weighted_crossentropy(probs, y)),
        "accuracy": float(np.mean(pred == y)),
        "macro_f1": f1_of_labels(pred, y),
        "macro_auc": float(auc),
        **_standard_errors(probs, y, pred),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                          "support": int(n[i])} for i, c in enumerate(classes)},
    }
    if objective is None:
        return out
    obj = OBJECTIVES[objective]
    if not obj.threshold:
        out[objective.removeprefix("val_")] = float(compute(objective, probs, y,
                                                            objective_params).value)
        return out
    out.update(_operating_point(obj.name, pred, y, classes, _objective_params(obj,
                                                                              objective_params),
                                decision))
    return out


def _standard_errors(probs: np.ndarray, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """How far accuracy and loss would move on another sample of the same size: the binomial
    ``sqrt(a (1 - a) / n)`` and the standard error of the mean per-example crossentropy (NaN with
    fewer than two examples)."""
    n = len(y)
    if n < 2:
        return {"accuracy_se": float("nan"), "loss_se": float("nan")}
    a = float(np.mean(pred == y))
    p = np.clip(probs / np.sum(probs, axis=1, keepdims=True), 1e-7, 1 - 1e-7)
    ce = -np.log(p[np.arange(n), np.asarray(y, dtype=np.int64)])
    return {"accuracy_se": float(np.sqrt(a * (1 - a) / n)),
            "loss_se": float(np.std(ce, ddof=1) / np.sqrt(n))}


def _operating_point(name: str, pred: np.ndarray, y: np.ndarray, classes: list[str],
                     params: Mapping[str, Any], decision: Mapping[str, Any] | None
                     ) -> dict[str, Any]:
    """A screening objective on decided labels: its value, and the sensitivity and specificity
    the decision rule reaches against the requirement (which these data may not meet)."""
    positive = int(params["positive"])
    sens, spec = rates_of_labels(pred, y, positive)
    at_spec = name == "val_sens_at_spec"
    required_name, achieved = ("specificity", spec) if at_spec else ("sensitivity", sens)
    required = float(params[required_name])
    rule = dict(decision or {})
    threshold = rule.get("threshold") if rule.get("rule") == "threshold" else None
    return {
        name.removeprefix("val_"): sens if at_spec else spec,
        "operating_point": {
            "positive": positive, "positive_class": classes[positive],
            "threshold": threshold, "sensitivity": sens, "specificity": spec,
            f"required_{required_name}": required,
            "requirement_met": bool(math.isfinite(achieved) and achieved >= required - 1e-12),
        },
    }


def describe_operating_point(result: Mapping[str, Any]) -> str | None:
    """One line on a screening objective's operating point, or None for other objectives."""
    point = result.get("operating_point")
    if not point:
        return None
    t = point.get("threshold")
    at = f"at the stored threshold {t:.4g}" if t is not None else "by the most probable class"
    req = next((k for k in point if k.startswith("required_")), None)
    line = (f"  {point['positive_class']!r} {at}: sensitivity {point['sensitivity']:.3f}, "
            f"specificity {point['specificity']:.3f}")
    if req:
        what = req.removeprefix("required_")
        line += (f" (required {what} {point[req]:g}: "
                 f"{'met' if point['requirement_met'] else 'NOT met'} on these data)")
    return line
