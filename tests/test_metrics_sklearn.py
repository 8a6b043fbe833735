"""The objectives scikit-learn now computes give the numbers the former NumPy code gave, to the
last bit (a trial's recorded values must not move), on the cases that code handled: a class
absent from the predictions, a predicted class absent from the labels, one class only, ties.
scikit-learn stays off ``tlsearch predict``'s start-up path, and the balanced class weights are
one function."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from tlsearch import metrics as M


def _former_f1_of_labels(pred, y) -> float:
    """The macro F1 as it was computed before scikit-learn did (kept as the reference)."""
    pred = np.asarray(pred).astype(np.int64).reshape(-1)
    y = np.asarray(y).astype(np.int64).reshape(-1)
    labels = np.union1d(y, pred)
    if not len(labels):
        return math.nan
    f1 = []
    for c in labels:
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        f1.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1))


def _former_balanced_accuracy(p, y) -> float:
    p, y = M.check_predictions(p, y)
    if not M._finite(p):
        return math.nan
    pred = np.argmax(p, axis=1)
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def _former_class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """``train.pipeline.class_weights`` as it was (the ``training.class_weight: auto`` weights)."""
    counts = np.bincount(y, minlength=n_classes).astype(float)
    return {i: float(len(y) / (n_classes * c)) if c else 0.0 for i, c in enumerate(counts)}


def _cases():
    """(name, probabilities, labels): random ones with and without signal and ties, and the edge
    cases the former code handled."""
    out = []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        k, n = int(rng.integers(2, 6)), int(rng.integers(5, 240))
        y = rng.integers(0, k, n)
        if seed % 3 == 0:  # ties: six distinct rows
            p = rng.dirichlet(np.ones(k), size=6)[rng.integers(0, 6, n)]
        else:
            z = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
            p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        out.append((f"random-{seed}", p.astype(np.float32), y))
    eye = np.eye(3)
    out += [
        # class 2 is never predicted
        ("absent-from-predictions", eye[[0, 1, 1, 0, 1]], np.array([0, 1, 2, 0, 2])),
        # class 2 is predicted but never true
        ("predicted-not-true", eye[[0, 1, 2, 0]], np.array([0, 1, 1, 0])),
        ("one-class-only", eye[[0, 0, 0]], np.array([0, 0, 0])),
        ("one-class-all-wrong", eye[[1, 2, 1]], np.array([0, 0, 0])),
        # every row ties: argmax takes the first class
        ("all-tied", np.full((4, 3), 1 / 3), np.array([0, 1, 2, 0])),
        ("single-example", eye[[2]], np.array([2])),
    ]
    return out


CASES = _cases()


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("name,p,y", CASES, ids=[c[0] for c in CASES])
def test_macro_f1_is_the_former_number_to_the_last_bit(name, p, y):
    pred = np.argmax(p, axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and says nothing about it
        got, got_labels = M.macro_f1(p, y), M.f1_of_labels(pred, y)
    assert _same(got, _former_f1_of_labels(pred, y)), name
    assert _same(got_labels, _former_f1_of_labels(pred, y)), name


@pytest.mark.parametrize("name,p,y", CASES, ids=[c[0] for c in CASES])
def test_balanced_accuracy_is_the_former_number_to_the_last_bit(name, p, y):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = M.balanced_accuracy(p, y)
    assert _same(got, _former_balanced_accuracy(p, y)), name


def test_no_labels_and_non_finite_predictions_stay_nan():
    assert math.isnan(M.f1_of_labels([], []))
    bad = np.array([[np.nan, 1.0], [0.5, 0.5]])
    assert math.isnan(M.macro_f1(bad, [0, 1])) and math.isnan(M.balanced_accuracy(bad, [0, 1]))
    with pytest.raises(ValueError, match="2 predictions but 3 labels"):
        M.f1_of_labels([0, 1], [0, 1, 1])


@pytest.mark.parametrize("y,k", [([0, 0, 0, 1, 2, 2], 3), ([1, 1, 0], 2), ([0, 0, 0, 0, 1], 2),
                                 ([0, 2, 2, 2], 3), ([3, 3], 4)])
def test_one_balanced_class_weight_function(y, k):
    """``training.class_weight: auto`` and the ``"balanced"`` weighted loss use one function: the
    former pipeline function's numbers, scikit-learn's where every class occurs, and 0.0 (with its
    entry kept) for a class with no example."""
    from tlsearch.train.pipeline import class_weights

    y = np.asarray(y)
    got = M.balanced_class_weights(y, k)
    assert class_weights is M.balanced_class_weights
    assert got == _former_class_weights(y, k) and list(got) == list(range(k))
    present = np.unique(y)
    expected = compute_class_weight("balanced", classes=present, y=y) * len(present) / k
    assert [got[int(c)] for c in present] == pytest.approx(list(expected), rel=1e-15)
    if len(present) == k:
        assert list(got.values()) == list(compute_class_weight("balanced", classes=present, y=y))
    assert all(got[c] == 0.0 for c in range(k) if c not in present)


def test_predict_starts_without_scikit_learn():
    """``tlsearch predict`` decides labels through ``evaluation.decide`` and
    ``metrics.apply_threshold``: none of that may import scikit-learn (1.4 s of a one-image
    predict), now that the metrics module uses it."""
    code = ("import sys, numpy as np; import tlsearch.commands.predict, tlsearch.export.predict; "
            "from tlsearch.evaluation import decide; "
            "print(list(decide(np.array([[0.3, 0.7], [0.8, 0.2]]), "
            "{'rule': 'threshold', 'threshold': 0.5, 'positive': 1})), 'sklearn' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["[np.int64(1),", "np.int64(0)]", "False"]
