"""Validation objectives: each equals scikit-learn's value, thresholds reproduce what they claim,
and the callback's keys reach the callbacks after it during ``fit``."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, log_loss, roc_auc_score, roc_curve

from tlsearch import metrics as M
from tlsearch import params as P


def _predictions(n: int, k: int, seed: int, ties: bool = False):
    """Probabilities that carry some signal about the labels; with ``ties`` the rows are drawn from
    six distinct vectors, so scores tie massively."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    if ties:
        table = rng.dirichlet(np.ones(k), size=6)
        p = table[rng.integers(0, 6, n)]
        p[: n // 3] = table[y[: n // 3] % 6]  # some signal
    else:
        logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return p.astype(np.float32), y


CASES = [(2, 0, False), (2, 1, True), (3, 2, False), (5, 3, False), (4, 4, True)]


@pytest.mark.parametrize("k,seed,ties", CASES)
def test_macro_f1_and_balanced_accuracy_equal_sklearn(k, seed, ties):
    p, y = _predictions(200, k, seed, ties)
    pred = p.argmax(1)
    assert M.macro_f1(p, y) == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    assert M.balanced_accuracy(p, y) == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)


@pytest.mark.parametrize("k,seed,ties", CASES)
def test_macro_auc_equals_sklearn(k, seed, ties):
    p, y = _predictions(300, k, seed, ties)
    if k == 2:
        expected = roc_auc_score(y, p[:, 1])
    else:
        expected = roc_auc_score(y, p.astype(np.float64), multi_class="ovr", average="macro")
    assert M.macro_auc(p, y) == pytest.approx(expected, abs=1e-12)


def test_macro_auc_skips_a_missing_class_with_a_warning():
    p, y = _predictions(200, 4, 5)
    y[y == 2] = 0  # class 2 never occurs: its AUC is undefined
    expected = np.mean([roc_auc_score(y == c, p[:, c]) for c in (0, 1, 3)])
    with pytest.warns(M.MetricWarning, match=r"classes \[2\]"):
        assert M.macro_auc(p, y) == pytest.approx(expected, abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.MetricWarning)
        assert math.isnan(M.macro_auc(p, np.zeros(200, int)))  # one class: nothing to rank


def test_predicted_but_absent_class_counts_zero_in_f1_like_sklearn():
    p = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    y = np.array([0, 1, 1, 0])  # class 2 is predicted once, never true
    assert M.macro_f1(p, y) == pytest.approx(f1_score(y, p.argmax(1), average="macro"))
    assert M.macro_f1(p, y) < 0.8


def _rates(pred, y, positive):
    pos = y == positive
    return np.mean(pred[pos] == positive), np.mean(pred[~pos] != positive)


@pytest.mark.parametrize("k,seed,ties,positive", [(2, 0, False, 1), (2, 1, True, 1),
                                                  (2, 2, False, 0), (3, 3, False, 2),
                                                  (4, 4, True, 1)])
@pytest.mark.parametrize("required", [0.9, 0.75, 0.99])
def test_sensitivity_at_specificity_matches_the_roc_curve_and_its_threshold(k, seed, ties,
                                                                            positive, required):
    p, y = _predictions(250, k, seed, ties)
    fpr, tpr, _ = roc_curve(y == positive, p[:, positive], drop_intermediate=False)
    expected = tpr[fpr <= 1 - required + 1e-12].max()
    value, threshold = M.sensitivity_at_specificity(p, y, required, positive=positive)
    assert value == pytest.approx(expected, abs=1e-12)
    sens, spec = _rates(M.apply_threshold(p, threshold, positive), y, positive)
    assert sens == pytest.approx(value, abs=1e-12)
    assert spec >= required - 1e-12


@pytest.mark.parametrize("k,seed,ties,positive", [(2, 0, False, 1), (2, 1, True, 1),
                                                  (3, 3, False, 2)])
@pytest.mark.parametrize("required", [0.9, 0.6])
def test_specificity_at_sensitivity_matches_the_roc_curve_and_its_threshold(k, seed, ties,
                                                                            positive, required):
    p, y = _predictions(250, k, seed, ties)
    fpr, tpr, _ = roc_curve(y == positive, p[:, positive], drop_intermediate=False)
    expected = (1 - fpr[tpr >= required - 1e-12]).max()
    value, threshold = M.specificity_at_sensitivity(p, y, required, positive=positive)
    assert value == pytest.approx(expected, abs=1e-12)
    sens, spec = _rates(M.apply_threshold(p, threshold, positive), y, positive)
    assert spec == pytest.approx(value, abs=1e-12)
    assert sens >= required - 1e-12


def test_threshold_never_splits_tied_scores():
    s = np.array([0.9, 0.7, 0.7, 0.7, 0.2, 0.1])
    y = np.array([1, 1, 0, 0, 0, 0])
    # spec >= 0.75 allows one false positive of four negatives, but the three tied 0.7s go
    # together (two false positives): only the 0.9 can be called positive
    value, threshold = M.sensitivity_at_specificity(s, y, 0.75)
    assert value == 0.5 and 0.7 < threshold <= 0.9
    assert list(M.apply_threshold(s, threshold)) == [1, 0, 0, 0, 0, 0]
    # with spec >= 0.5 the tied group is in; the threshold sits halfway to the next score
    value, threshold = M.sensitivity_at_specificity(s, y, 0.5)
    assert value == 1.0 and threshold == pytest.approx(0.45)


def test_apply_threshold_picks_the_best_other_class():
    p = np.array([[0.5, 0.1, 0.4], [0.2, 0.5, 0.3], [0.1, 0.6, 0.3]])
    assert list(M.apply_threshold(p, 0.35, positive=2)) == [2, 1, 1]
    assert list(M.apply_threshold(np.array([0.2, 0.6]), 0.5)) == [0, 1]
    assert list(M.apply_threshold(p, math.nan, positive=0)) == [2, 1, 1]


def test_undefined_values_are_nan():
    p, y = _predictions(50, 2, 0)
    with pytest.warns(M.MetricWarning, match="no positive"):
        assert all(math.isnan(v) for v in M.sensitivity_at_specificity(p, np.zeros(50, int)))
    bad = p.copy()
    bad[3, 0] = np.nan
    for f in (M.macro_f1, M.balanced_accuracy, M.macro_auc, M.weighted_crossentropy):
        assert math.isnan(f(bad, y))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        M.sensitivity_at_specificity(p, y, 1.5)
    with pytest.raises(ValueError, match="positive class 2"):
        M.sensitivity_at_specificity(p, y, positive=2)


def test_weighted_crossentropy():
    p, y = _predictions(300, 3, 7)
    y[:200] = 0  # imbalanced
    p = p.astype(np.float64) / p.astype(np.float64).sum(1, keepdims=True)
    ce = -np.log(p[np.arange(len(y)), y])
    assert M.weighted_crossentropy(p, y) == pytest.approx(log_loss(y, p), abs=1e-6)
    w = {0: 0.5, 1: 2.0}  # class 2 omitted: weighs 1, as in Keras' fit
    sw = np.array([w.get(c, 1.0) for c in y])
    assert M.weighted_crossentropy(p, y, w) == pytest.approx(
        log_loss(y, p, sample_weight=sw), abs=1e-6)
    per_class = np.mean([ce[y == c].mean() for c in range(3)])
    balanced = M.weighted_crossentropy(p, y, "balanced")
    assert balanced == pytest.approx(per_class, abs=1e-6)
    assert abs(balanced - M.weighted_crossentropy(p, y)) > 1e-3
    assert M.weighted_crossentropy(p, y, [1.0, 1.0, 1.0]) == pytest.approx(ce.mean(), abs=1e-6)


def test_catalogue():
    cat = P.OBJECTIVES
    assert {"val_loss", "val_accuracy", "val_auc", "val_macro_auc", "val_macro_f1",
            "val_balanced_accuracy", "val_sens_at_spec", "val_spec_at_sens"} <= set(cat)
    assert cat["val_loss"].direction == "minimize" and not cat["val_loss"].maximize
    assert cat["val_macro_f1"].maximize and cat["val_macro_f1"].needs_callback
    assert not cat["val_auc"].needs_callback and "micro" in cat["val_auc"].label
    assert cat["val_sens_at_spec"].threshold and cat["val_sens_at_spec"].params["specificity"] == 0.9
    assert not cat["val_macro_auc"].threshold
    p, y = _predictions(120, 2, 0)
    for name in cat:  # every entry can be computed by name
        assert math.isfinite(P.compute(name, p, y).value)
    assert P.compute("val_sens_at_spec", p, y, {"specificity": 0.8}) == \
        M.sensitivity_at_specificity(p, y, 0.8)
    with pytest.raises(ValueError, match="takes no parameter"):
        P.compute("val_macro_f1", p, y, {"specificity": 0.8})
    with pytest.raises(ValueError, match="unknown objective 'val_f1'"):
        P.objective("val_f1")


def test_catalogue_import_does_not_load_tensorflow():
    code = "import sys, tlsearch.metrics, tlsearch.params; print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------- the callback


def _fit(callbacks, epochs=2, seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=64) > 0).astype(np.int64)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    hist = model.fit(x[:48], y[:48], validation_data=(x[48:], y[48:]), epochs=epochs,
                     batch_size=16, callbacks=callbacks, verbose=0)
    return model, hist, x[48:], y[48:]


def _probe():
    """A callback that records the logs it sees at each epoch end."""
    import keras

    class Probe(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seen = []

        def on_epoch_end(self, epoch, logs=None):
            self.seen.append(dict(logs))

    return Probe()


def test_callback_puts_objectives_in_logs_for_the_callbacks_after_it():
    from tlsearch.train.validation import ValidationMetrics

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=64) > 0).astype(np.int64)
    names = ["val_macro_f1", "val_balanced_accuracy", "val_macro_auc", "val_sens_at_spec",
             "val_spec_at_sens", "val_weighted_loss"]
    before, after = _probe(), _probe()
    vm = ValidationMetrics(x[48:], y[48:], metrics=names,
                           params={"val_sens_at_spec": {"specificity": 0.8}})
    model, hist, xv, yv = _fit([before, vm, after], epochs=3)
    assert len(after.seen) == 3
    for logs in after.seen:
        assert set(names) | {"val_sens_at_spec_threshold", "val_spec_at_sens_threshold"} <= set(logs)
    assert not set(names) & set(before.seen[-1])  # a callback before it cannot see them
    p = model.predict(xv, verbose=0)  # the last epoch's values are the final model's
    last = after.seen[-1]
    assert last["val_macro_auc"] == pytest.approx(roc_auc_score(yv, p[:, 1]), abs=1e-9)
    assert last["val_macro_f1"] == pytest.approx(f1_score(yv, p.argmax(1), average="macro"), abs=1e-9)
    assert (last["val_sens_at_spec"], last["val_sens_at_spec_threshold"]) == \
        M.sensitivity_at_specificity(p, yv, 0.8)
    assert last["val_weighted_loss"] == pytest.approx(M.weighted_crossentropy(p, yv, "balanced"))
    assert hist.history["val_macro_f1"] == [s["val_macro_f1"] for s in after.seen]  # History too
    assert vm.scores["val_macro_auc"].value == last["val_macro_auc"]


def test_callback_reads_a_shuffled_dataset_with_its_labels():
    import tensorflow as tf

    from tlsearch.train.validation import ValidationMetrics

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=64) > 0).astype(np.int64)
    ds = tf.data.Dataset.from_tensor_slices((x[48:], y[48:])).shuffle(16).batch(5)
    from_arrays = ValidationMetrics(x[48:], y[48:], metrics=["val_macro_auc", "val_macro_f1"])
    from_ds = ValidationMetrics(ds, metrics=["val_macro_auc", "val_macro_f1"])
    probe = _probe()
    _fit([from_arrays, from_ds, probe], epochs=1)
    assert from_ds.scores == from_arrays.scores
    assert not math.isnan(from_ds.scores["val_macro_auc"].value)


def test_pruning_callback_after_it_reports_the_objective():
    import optuna
    from optuna_integration import KerasPruningCallback

    from tlsearch.train.validation import ValidationMetrics

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=64) > 0).astype(np.int64)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = optuna.create_study(direction="maximize").ask()
    vm = ValidationMetrics(x[48:], y[48:], metrics=["val_balanced_accuracy"])
    _, hist, _, _ = _fit([vm, KerasPruningCallback(trial, "val_balanced_accuracy")], epochs=2)
    reported = trial.storage.get_trial(trial._trial_id).intermediate_values
    assert reported == dict(enumerate(hist.history["val_balanced_accuracy"]))


def test_callback_rejects_what_it_does_not_compute():
    from tlsearch.train.validation import ValidationMetrics

    with pytest.raises(ValueError, match="Keras' compiled metrics"):
        ValidationMetrics(np.zeros((2, 4)), [0, 1], metrics=["val_accuracy"])
    with pytest.raises(ValueError, match="y_val is required"):
        ValidationMetrics(np.zeros((2, 4)), metrics=["val_macro_f1"])
    with pytest.raises(ValueError, match="takes no parameter"):
        ValidationMetrics(np.zeros((2, 4)), [0, 1], metrics=["val_macro_f1"],
                          params={"val_macro_f1": {"specificity": 0.9}})
