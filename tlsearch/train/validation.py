"""The objectives that Keras does not compute (macro F1, balanced accuracy, macro AUC, sensitivity
at a required specificity ...), computed after every epoch from the validation predictions; and
the standard error of an objective over the validation examples (:func:`value_se`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import keras
import numpy as np

from tlsearch.params import OBJECTIVES, compute, objective, objective_params

__all__ = ["ValidationMetrics", "predict_validation", "value_se"]


class ValidationMetrics(keras.callbacks.Callback):
    """After each epoch, predicts the validation data and writes the chosen objectives into ``logs``.

    Keras hands the same ``logs`` dict to every callback in the order of ``callbacks=[...]``, so
    this callback must be FIRST in that list: a pruning callback (Optuna's ``KerasPruningCallback``
    with ``monitor="val_macro_f1"``), ``EarlyStopping``, or the pipeline's best-epoch tracker only
    see the keys if they come after it. Keras' own History and progress bar run after user
    callbacks, so ``fit(...).history`` records the keys too.

    Args:
        validation_data: the inputs the model is being fitted on, for the validation examples:
            an array or a dict of arrays (then ``y_val`` is required), or a ``tf.data.Dataset``
            of ``(x, y)`` batches (``y_val`` may then be omitted; the dataset is read batch by
            batch with its labels, so a shuffling dataset stays aligned). In the two-stage
            pipeline, pass the cached validation features of the stage being fitted: predicting
            them with the small head costs little next to an epoch.
        y_val: integer labels ``(n,)`` or one-hot ``(n, k)``.
        metrics: names of callback objectives from :data:`tlsearch.params.OBJECTIVES`
            (``val_macro_f1``, ``val_balanced_accuracy``, ``val_macro_auc``,
            ``val_sens_at_spec``, ``val_spec_at_sens``, ``val_weighted_loss``).
        params: per objective, parameters overriding the catalogue's defaults, e.g.
            ``{"val_sens_at_spec": {"specificity": 0.95, "positive": 1}}``.
        batch_size: for predicting arrays.

    Objectives that choose a threshold also log it as ``<name>_threshold`` (so the epoch that is
    kept brings its threshold along), and the latest scores are in :attr:`scores`.
    """

    def __init__(self, validation_data, y_val=None, metrics: Iterable[str] = ("val_macro_f1",),
                 params: Mapping[str, Mapping] | None = None, batch_size: int = 256) -> None:
        super().__init__()
        self.metrics = list(metrics)
        if not self.metrics:
            raise ValueError("ValidationMetrics: no metrics asked for")
        for name in self.metrics:
            if not objective(name).needs_callback:
                raise ValueError(f"{name!r} is computed by Keras' compiled metrics, not by "
                                 f"ValidationMetrics")
        params = dict(params or {})
        unknown = set(params) - set(self.metrics)
        if unknown:
            raise ValueError(f"parameters for objectives not asked for: {sorted(unknown)}")
        self.params_by_metric = {n: objective_params(OBJECTIVES[n], params.get(n)) for n in self.metrics}
        self._is_dataset = _is_dataset(validation_data)
        if not self._is_dataset and y_val is None:
            raise ValueError("ValidationMetrics: y_val is required unless validation_data is a "
                             "tf.data.Dataset of (x, y)")
        self.validation_data = validation_data
        self.y_val = None if y_val is None else np.asarray(y_val)
        self.batch_size = int(batch_size)
        self.scores: dict = {}

    def _predict(self) -> tuple[np.ndarray, np.ndarray]:
        return predict_validation(self.model, self.validation_data, self.y_val, self.batch_size)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:  # called outside fit: nothing to share, keep the scores
            logs = {}
        p, y = self._predict()
        for name in self.metrics:
            score = compute(name, p, y, self.params_by_metric[name])
            self.scores[name] = score
            logs[name] = score.value
            if OBJECTIVES[name].threshold:
                logs[f"{name}_threshold"] = score.threshold


def predict_validation(model, validation_data, y_val=None, batch_size: int = 256
                       ) -> tuple[np.ndarray, np.ndarray]:
    """``(predictions, labels)`` of ``model`` on the validation inputs: arrays (or a dict of
    arrays) with ``y_val``, or a ``tf.data.Dataset`` of ``(x, y)`` batches, read batch by batch
    with its labels (so a shuffling dataset stays aligned)."""
    if not _is_dataset(validation_data):
        assert y_val is not None
        # called eagerly, batch by batch: model.predict sets up an epoch iterator and traces a
        # function for every new model, which costs more than a small head's whole pass
        x = validation_data
        n = len(next(iter(x.values())) if isinstance(x, dict) else x)
        out = [np.asarray(model(
            {k: v[i:i + batch_size] for k, v in x.items()} if isinstance(x, dict)
            else x[i:i + batch_size], training=False)) for i in range(0, n, batch_size)]
        return np.concatenate(out), np.asarray(y_val)
    ps, ys = [], []
    for batch in validation_data:
        if isinstance(batch, tuple) and len(batch) >= 2:
            x, y = batch[0], batch[1]
            ys.append(np.asarray(y))
        else:
            x = batch[0] if isinstance(batch, tuple) else batch
        ps.append(np.asarray(model.predict_on_batch(x)))
    p = np.concatenate(ps)
    y = np.concatenate(ys) if y_val is None else np.asarray(y_val)
    return p, y


#: bootstrap resamples for the objectives without a closed-form standard error
BOOTSTRAP = 200


def value_se(name: str, p, y, params: Mapping | None = None, *, seed: int = 0) -> float:
    """The standard error of objective ``name`` over the validation examples ``(p, y)``: how much
    the value would move on another validation set of the same size.

    ``val_accuracy``: binomial, ``sqrt(a (1 - a) / n)``. ``val_loss``: the standard deviation of
    the per-example cross-entropy over ``sqrt(n)`` (the standard error of a mean). The others (AUC,
    F1, balanced accuracy, operating points, the class-weighted loss): the standard deviation of
    the objective over :data:`BOOTSTRAP` resamples of the examples (seeded). NaN when undefined.
    """
    from tlsearch.metrics import check_predictions

    p, y = check_predictions(p, y)
    n = len(y)
    if n < 2 or not np.all(np.isfinite(p)):
        return float("nan")
    if name == "val_accuracy":
        a = float(np.mean(p.argmax(axis=1) == y))
        return float(np.sqrt(a * (1.0 - a) / n))
    if name == "val_loss":
        losses = -np.log(np.clip(p[np.arange(n), y], 1e-7, 1.0))
        return float(np.std(losses, ddof=1) / np.sqrt(n))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(BOOTSTRAP):
        idx = rng.integers(0, n, n)
        values.append(compute(name, p[idx], y[idx], params).value)
    finite = np.asarray([v for v in values if np.isfinite(v)])
    return float(np.std(finite, ddof=1)) if len(finite) > 1 else float("nan")


def _is_dataset(x) -> bool:
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover - the package depends on TensorFlow
        return False
    return isinstance(x, tf.data.Dataset)
