"""Validation objectives beyond loss and accuracy, computed from a model's validation predictions.

A study optimises one number per trial. Loss and accuracy mislead on imbalanced or screening tasks:
a model that always predicts the majority class scores 95 % accuracy on a 95:5 split, and a
screening test is judged by its sensitivity at a fixed specificity, not by its loss. The objectives
here are computed in NumPy from probabilities ``p`` (``(n, k)``, rows summing to 1, as the
pipeline's softmax head gives) and integer labels ``y`` (``(n,)``), so the same code serves the
per-epoch callback, the report and the exported predictor.

Objectives
    :func:`macro_f1`, :func:`balanced_accuracy`, :func:`macro_auc`: each returns a float.
    :func:`f1_of_labels` is the macro F1 of labels already decided (every place that reports a
    macro F1 uses it); :func:`rates_of_labels` the sensitivity and specificity they reach.
    :func:`sensitivity_at_specificity`, :func:`specificity_at_sensitivity`: each returns a
    :class:`Score` ``(value, threshold)``; the threshold is chosen on these (validation)
    predictions, and :func:`apply_threshold` applies it to new predictions, so an exported model
    decides as it was selected.
    :func:`weighted_crossentropy`: the class-weighted mean crossentropy, the validation loss that
    matches a model trained with class weights (Keras' ``val_loss`` is unweighted).

Undefined values are NaN, never an exception, because a study must go on when one trial's
validation split lacks a class: the pipeline skips non-finite epochs when it picks the best one.
:func:`macro_auc` skips a class that has no positive or no negative example in ``y`` (its AUC is
undefined), averages the rest and warns with :class:`MetricWarning`; NaN when no class is left.
Non-finite probabilities (a diverged trial) make every objective NaN. Tied scores are handled
exactly: AUC counts a tied positive/negative pair as one half (as scikit-learn does), and a
threshold never separates tied scores, so the sensitivity and specificity it claims are the ones
:func:`apply_threshold` reproduces.

Where scikit-learn computes the same number to the last bit, it computes it here (the macro F1,
the balanced accuracy), imported on first use so that ``tlsearch predict``, which needs only
:func:`apply_threshold` from this module, starts without it. The rest stays in NumPy because
scikit-learn's number differs: its ROC AUC (a trapezoid sum) differs from the rank form in the
last bits, which would change trials' recorded values; its ``log_loss`` clips at machine epsilon,
not at Keras' 1e-7; its balanced class weights refuse a class with no examples.

The catalogue of objectives that names these functions is :data:`tlsearch.params.OBJECTIVES`;
``tlsearch.train.validation.ValidationMetrics`` computes them after every epoch. Importing this
module does not import TensorFlow.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np

__all__ = ["Score", "MetricWarning", "check_predictions", "accuracy", "macro_f1", "f1_of_labels",
           "rates_of_labels",
           "balanced_accuracy", "macro_auc", "binary_auc", "pooled_auc",
           "sensitivity_at_specificity", "specificity_at_sensitivity", "apply_threshold",
           "weighted_crossentropy", "balanced_class_weights"]

#: probabilities are clipped to [EPSILON, 1 - EPSILON] before the log, as Keras' crossentropy does
EPSILON = 1e-7


class MetricWarning(UserWarning):
    """An objective is partly undefined on these validation labels (for example a missing class)."""


class Score(NamedTuple):
    """An objective's value and the decision threshold chosen for it on the validation predictions.

    ``threshold`` applies to the positive class's probability: :func:`apply_threshold` predicts
    the positive class where ``p[:, positive] >= threshold``.
    """

    value: float
    threshold: float


# ---------------------------------------------------------------------------- input checking


def check_predictions(p, y) -> tuple[np.ndarray, np.ndarray]:
    """``p`` as float64 ``(n, k)`` and ``y`` as int64 ``(n,)``; one-hot labels become integers."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 1:  # one sigmoid output: the probability of class 1
        p = np.stack([1.0 - p, p], axis=1)
    elif p.ndim == 2 and p.shape[1] == 1:
        p = np.concatenate([1.0 - p, p], axis=1)
    if p.ndim != 2:
        raise ValueError(f"probabilities must have shape (n, classes), got {p.shape}")
    y = np.asarray(y)
    if y.ndim == 2:  # one-hot
        y = np.argmax(y, axis=1)
    y = y.astype(np.int64).reshape(-1)
    if len(y) != len(p):
        raise ValueError(f"{len(p)} predictions but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must lie in 0..{p.shape[1] - 1}, got {y.min()}..{y.max()}")
    return p, y


def _finite(p: np.ndarray) -> bool:
    return len(p) > 0 and bool(np.all(np.isfinite(p)))


def _positive_index(p: np.ndarray, positive: int) -> int:
    positive = int(positive)
    if not 0 <= positive < p.shape[1]:
        raise ValueError(f"positive class {positive} is not one of 0..{p.shape[1] - 1}")
    return positive


# ---------------------------------------------------------------------------- objectives


def macro_f1(p, y) -> float:
    """The macro F1 (:func:`f1_of_labels`) of the argmax predictions."""
    p, y = check_predictions(p, y)
    if not _finite(p):
        return math.nan
    return f1_of_labels(np.argmax(p, axis=1), y)


def f1_of_labels(pred, y) -> float:
    """Macro F1 of predicted labels: the one definition every figure uses (the objective, the
    held-out test, ``tlsearch evaluate``, the report's macro average).

    The unweighted mean of per-class F1 over the classes that occur in ``y`` or in ``pred``, as
    scikit-learn's ``f1_score(average="macro")`` (no ``labels``) does: a class that is neither
    present nor predicted says nothing about this model, while a predicted class that never
    occurs scores 0 (every prediction of it is wrong). Every class averaged has ``2 tp + fp + fn
    > 0``, so no division by zero arises; NaN when there are no labels at all.
    """
    pred = np.asarray(pred).astype(np.int64).reshape(-1)
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if len(y) != len(pred):
        raise ValueError(f"{len(pred)} predictions but {len(y)} labels")
    if not len(y):
        return math.nan
    from sklearn.metrics import f1_score

    return float(f1_score(y, pred, average="macro"))


def rates_of_labels(pred, y, positive: int) -> tuple[float, float]:
    """(sensitivity, specificity) of class ``positive`` in predicted labels: the share of its
    examples predicted as it, and the share of the others predicted as something else (NaN where
    ``y`` has none of them)."""
    pred = np.asarray(pred).astype(np.int64).reshape(-1)
    pos = np.asarray(y).astype(np.int64).reshape(-1) == int(positive)
    said = pred == int(positive)
    sens = float(np.mean(said[pos])) if pos.any() else math.nan
    spec = float(np.mean(~said[~pos])) if (~pos).any() else math.nan
    return sens, spec


def balanced_accuracy(p, y) -> float:
    """The mean recall over the classes present in ``y`` (scikit-learn's ``balanced_accuracy_score``).

    Each class counts equally however rare it is, so always predicting the majority class scores
    ``1 / classes`` instead of the majority's share.
    """
    p, y = check_predictions(p, y)
    if not _finite(p):
        return math.nan
    from sklearn.metrics import balanced_accuracy_score

    # its notes on labels that lack classes (a predicted class absent from y, one class only)
    # are no news here: a class absent from y has no recall and is left out, as documented
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"sklearn\.")
        return float(balanced_accuracy_score(y, np.argmax(p, axis=1)))


def _average_ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = np.argsort(s, kind="mergesort")
    ordered = s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ordered) != 0) + 1]
    ends = np.r_[starts[1:], len(s)]
    ranks = np.empty(len(s), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def binary_auc(scores, is_positive) -> float:
    """ROC AUC of ``scores`` for the boolean ``is_positive`` (NaN if either side is empty).

    The Mann-Whitney form: the probability that a random positive scores above a random negative,
    a tie counting one half, which equals the area under the exact (trapezoidal) ROC curve.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    pos = np.asarray(is_positive, dtype=bool).reshape(-1)
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0 or not np.all(np.isfinite(s)):
        return math.nan
    r = _average_ranks(s)
    return float((r[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def macro_auc(p, y) -> float:
    """One-vs-rest ROC AUC averaged over classes with equal weight.

    For two classes it is the plain binary AUC of class 1's probability. Unlike Keras'
    ``AUC`` metric on one-hot labels (``val_auc``), which pools all class columns into one curve (a
    micro average dominated by the frequent classes) on 200 fixed thresholds, this is exact and
    counts each class equally, as scikit-learn's ``roc_auc_score(multi_class="ovr",
    average="macro")``. A class absent from ``y`` has no AUC: it is skipped with a
    :class:`MetricWarning` (scikit-learn raises instead); NaN when fewer than two classes occur.
    """
    p, y = check_predictions(p, y)
    if not _finite(p):
        return math.nan
    k = p.shape[1]
    if k == 2:
        return binary_auc(p[:, 1], y == 1)
    aucs = {c: binary_auc(p[:, c], y == c) for c in range(k)}
    skipped = [c for c, a in aucs.items() if math.isnan(a)]
    if skipped:
        warnings.warn(f"macro AUC: classes {skipped} have no positive or no negative example in "
                      f"the validation labels; averaged over the other {k - len(skipped)}",
                      MetricWarning, stacklevel=2)
    kept = [a for a in aucs.values() if not math.isnan(a)]
    return float(np.mean(kept)) if kept else math.nan


def _roc_points(s: np.ndarray, pos: np.ndarray):
    """Every distinct decision ``s >= t``: the thresholds (descending, +inf first: nothing
    positive), and the true and false positives each calls."""
    u = np.unique(s)[::-1]
    t = np.r_[np.inf, u]
    sp, sn = np.sort(s[pos]), np.sort(s[~pos])
    tp = len(sp) - np.searchsorted(sp, t, side="left")
    fp = len(sn) - np.searchsorted(sn, t, side="left")
    return t, tp, fp


def _between(t: np.ndarray, i: int) -> float:
    """A threshold that calls exactly what ``t[i]`` calls on these scores: halfway down to the
    next lower score, so a new score close to the boundary is decided by its nearer side."""
    if math.isinf(t[i]):
        return float(np.nextafter(t[1], np.inf)) if len(t) > 1 else math.inf
    if i + 1 < len(t):
        mid = float((t[i] + t[i + 1]) / 2.0)
        return mid if mid > t[i + 1] else float(t[i])  # adjacent doubles: no room between
    return float(t[i])


def _operating_point(p, y, target: float, positive: int, at: Literal["spec", "sens"]) -> Score:
    p, y = check_predictions(p, y)
    if not 0.0 < target <= 1.0:
        raise ValueError(f"the required {'specificity' if at == 'spec' else 'sensitivity'} must "
                         f"lie in (0, 1], got {target}")
    positive = _positive_index(p, positive)
    pos = y == positive
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not _finite(p) or n_pos == 0 or n_neg == 0:
        if _finite(p):
            warnings.warn(f"the validation labels have no {'positive' if n_pos == 0 else 'negative'}"
                          f" example of class {positive}: sensitivity/specificity undefined",
                          MetricWarning, stacklevel=3)
        return Score(math.nan, math.nan)
    t, tp, fp = _roc_points(p[:, positive], pos)
    sens, spec = tp / n_pos, 1.0 - fp / n_neg
    tol = 1e-12  # 1 - 1/10 is not exactly 0.9 in floating point
    if at == "spec":
        ok = np.flatnonzero(spec >= target - tol)  # never empty: +inf calls nothing positive
        # the highest sensitivity; among equals the highest specificity (the largest threshold)
        i = ok[np.lexsort((-spec[ok], -sens[ok]))[0]]
        return Score(float(sens[i]), _between(t, i))
    ok = np.flatnonzero(sens >= target - tol)  # never empty: the lowest score calls all positive
    i = ok[np.lexsort((-sens[ok], -spec[ok]))[0]]
    return Score(float(spec[i]), _between(t, i))


def sensitivity_at_specificity(p, y, specificity: float = 0.9, positive: int = 1) -> Score:
    """The highest sensitivity (recall of class ``positive``) whose specificity is at least
    ``specificity``, and the threshold on ``p[:, positive]`` that achieves both on these data.

    What a screening test is judged by: "how many cases do we catch if at most 10 % of healthy
    people are flagged". Among thresholds with the same sensitivity the one with the higher
    specificity wins. For more than two classes, ``positive`` is scored one-vs-rest. NaN (value
    and threshold) when ``y`` has no positive or no negative example.
    """
    return _operating_point(p, y, float(specificity), positive, "spec")


def specificity_at_sensitivity(p, y, sensitivity: float = 0.9, positive: int = 1) -> Score:
    """The highest specificity whose sensitivity for class ``positive`` is at least
    ``sensitivity``, and its threshold on ``p[:, positive]`` (the mirror of
    :func:`sensitivity_at_specificity`: "catch 90 % of cases, flag as few healthy as possible")."""
    return _operating_point(p, y, float(sensitivity), positive, "sens")


def apply_threshold(p, threshold: float, positive: int = 1) -> np.ndarray:
    """Predicted labels: ``positive`` where ``p[:, positive] >= threshold``, otherwise the most
    probable other class (for two classes, simply the other one).

    ``p`` may also be ``(n,)``, the probability of class 1 of a binary task. A NaN threshold
    predicts ``positive`` nowhere.
    """
    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 1 or (p.ndim == 2 and p.shape[1] == 1):
        p = p.reshape(-1)
        p = np.stack([1.0 - p, p], axis=1)
    positive = _positive_index(p, positive)
    others = p.copy()
    others[:, positive] = -np.inf
    rest = np.argmax(others, axis=1)
    return np.where(p[:, positive] >= threshold, positive, rest).astype(np.int64)


def balanced_class_weights(y, n_classes: int) -> dict[int, float]:
    """Balanced weights ``n / (k * count)`` for every class ``0 .. n_classes - 1``: the training
    weights of ``training.class_weight: auto`` and the ``"balanced"`` of
    :func:`weighted_crossentropy`.

    scikit-learn's ``compute_class_weight("balanced")`` where every class occurs; a class with no
    example in ``y`` (which scikit-learn refuses) weighs 0.0, so it still has an entry."""
    y = np.asarray(y).astype(np.int64).reshape(-1)
    counts = np.bincount(y, minlength=n_classes).astype(float)
    return {c: float(len(y) / (n_classes * n)) if n else 0.0 for c, n in enumerate(counts)}


def weighted_crossentropy(p, y, class_weight: Mapping[int, float] | Sequence[float] | str | None
                          = None) -> float:
    """The class-weighted mean crossentropy ``sum(w[y] * ce) / sum(w[y])`` on validation predictions.

    When training weights classes (``training.class_weight``), Keras' ``val_loss`` is still the
    unweighted mean, so it measures something else than the loss being minimised and keeps
    favouring the majority class. This is the validation loss that matches: with ``"balanced"``
    weights (computed on ``y``), the mean over classes of each class's mean crossentropy.
    ``class_weight`` is a dict (a class it omits weighs 1, as in Keras' ``fit``), a sequence with
    one weight per class, ``"balanced"`` or None (unweighted: Keras' ``val_loss``). Dividing by the
    weights' sum rather than by ``n`` keeps the value on the crossentropy scale whatever the
    weights' scale. Probabilities are renormalised and clipped to ``[1e-7, 1 - 1e-7]`` as Keras does.
    """
    p, y = check_predictions(p, y)
    if not _finite(p):
        return math.nan
    k = p.shape[1]
    if class_weight is None:
        w = np.ones(k)
    elif isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be a dict, a sequence or 'balanced', "
                             f"got {class_weight!r}")
        cw = balanced_class_weights(y, k)
        w = np.array([cw.get(c, 0.0) for c in range(k)])
    elif isinstance(class_weight, Mapping):
        w = np.array([float(class_weight.get(c, 1.0)) for c in range(k)])
    else:
        w = np.asarray(class_weight, dtype=np.float64).reshape(-1)
        if len(w) != k:
            raise ValueError(f"{len(w)} class weights for {k} classes")
    q = p / np.sum(p, axis=1, keepdims=True)
    q = np.clip(q, EPSILON, 1.0 - EPSILON)
    ce = -np.log(q[np.arange(len(y)), y])
    wy = w[y]
    if wy.sum() <= 0:
        return math.nan
    return float(np.sum(wy * ce) / np.sum(wy))


def accuracy(p, y) -> float:
    p, y = check_predictions(p, y)
    return float(np.mean(np.argmax(p, axis=1) == y)) if _finite(p) else math.nan


def pooled_auc(p, y) -> float:
    """Keras' ``AUC`` on one-hot labels, exactly: every class column pooled into one curve (a micro
    average, where frequent classes dominate)."""
    pp, yy = check_predictions(p, y)
    onehot = np.eye(pp.shape[1], dtype=bool)[yy]
    return binary_auc(pp.reshape(-1), onehot.reshape(-1))
