"""The two-stage transfer pipeline, with no search engine inside.

A trial is a list of :mod:`stages <tlsearch.train.stages>` run in order: a new head (dense,
dropout, softmax) on the frozen backbone, then the top N blocks unfrozen, BatchNorm excepted, at a
lower rate. The frozen part runs in inference mode (``training=False``), so BatchNorm keeps its
ImageNet statistics and the frozen part computes the same numbers every epoch: that is what lets
:mod:`tlsearch.train.cache` compute it once.

Epochs are counted on one global step across all stages (each stage starts at ``initial_epoch`` =
where the previous ended), so whoever listens to :class:`EpochRecord` sees one curve. The trial's
value is its best epoch's, and the weights kept are that epoch's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from tlsearch.data import Dataset
from tlsearch.errors import NonFiniteLoss
from tlsearch.metrics import balanced_class_weights
from tlsearch.params import OBJECTIVES, TrialParams
from tlsearch.train.augment import Augmenter, EpochBatches, dataset_augmenter
from tlsearch.train.context import Inputs, TrialContext, TrialPlan
from tlsearch.train.dann_stage import (TARGET_LABELS, DomainFineTuneStage, DomainHeadStage,
                                       domain_report)
from tlsearch.train.features import BackboneSource
from tlsearch.train.schedule import METRIC_KEYS, Schedule
from tlsearch.train.stages import Stage

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from tlsearch.train.heads import Head

__all__ = [
    "default_stages",
    "Schedule",
    "EpochRecord",
    "TrialResult",
    "run_trial",
    "planned_steps",
    "class_weights",
    "build_trained_model",
    "clear_state",
    "METRIC_KEYS",
]

#: the balanced weights of ``training.class_weight: auto`` (one function, in tlsearch.metrics)
class_weights = balanced_class_weights


@dataclass
class EpochRecord:
    """One epoch of one stage, at its global step. ``metrics`` holds :data:`METRIC_KEYS`."""

    step: int
    stage: int
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def value(self, objective: str) -> float:
        return float(self.metrics.get(objective, math.nan))

    def __getattr__(self, name: str) -> float:
        # rec.val_loss, rec.val_accuracy, ...: the metrics read as attributes
        metrics = self.__dict__.get("metrics", {})
        if name in metrics:
            return metrics[name]
        raise AttributeError(name)

    def to_dict(self) -> dict[str, Any]:
        """The flat form stored on a trial (``step``, ``stage``, each metric, ``seconds``)."""
        return {"step": self.step, "stage": self.stage, **self.metrics, "seconds": self.seconds}


@dataclass
class TrialResult:
    value: float
    best_step: int
    best_stage: int
    history: list[EpochRecord]
    #: weights that differ from the pretrained backbone at the best epoch: the head, and the
    #: unfrozen blocks if the best epoch was in stage 2. Keyed by layer name.
    weights: dict[str, list[np.ndarray]]
    unfrozen_blocks: int
    cached: bool
    seconds: float = 0.0
    #: with ``data.target``: the criterion and how the kept head sees both domains
    #: (:func:`tlsearch.train.dann_stage.domain_report`)
    domain: dict | None = None
    #: the standard error of ``value`` over the validation examples
    #: (:func:`tlsearch.train.validation.value_se`); None where it was not measured (a DANN
    #: epoch, a label-free value)
    value_se: float | None = None

    def history_dicts(self) -> list[dict]:
        return [r.to_dict() for r in self.history]


class _Tracker:
    """Keeps the best epoch's value and the weights of the layers that were training then."""

    def __init__(self, objective: str, maximize: bool, keep_last: bool = False) -> None:
        self.objective = objective
        self.maximize = maximize
        #: keep the last epoch rather than the best (label-free selection: the best source
        #: epoch is the least adapted one)
        self.keep_last = keep_last
        self.best: EpochRecord | None = None
        self.weights: dict[str, list[np.ndarray]] = {}
        #: the standard error of the best epoch's value, where it was measured
        self.se: float | None = None

    def update(self, record: EpochRecord, layers: list[keras.layers.Layer]) -> None:
        v = record.value(self.objective)
        if not math.isfinite(v):
            return
        if self.best is not None and not self.keep_last:
            b = self.best.value(self.objective)
            if (v <= b) if self.maximize else (v >= b):
                return
        self.best = record
        self.se = None
        self.weights = {layer.name: [np.array(w) for w in layer.get_weights()] for layer in layers
                        if layer.weights}

    def restore(self, layers: list[keras.layers.Layer]) -> None:
        """Put the best epoch's weights back into ``layers`` (the next stage goes on from them)."""
        for layer in layers:
            if layer.name in self.weights:
                layer.set_weights(self.weights[layer.name])


def _epoch_callback(stage: int, tracker: _Tracker, layers: list[keras.layers.Layer],
                    on_epoch: Callable[[EpochRecord], None] | None, history: list[EpochRecord],
                    keys: tuple[str, ...] = METRIC_KEYS,
                    on_batch: Callable[[int, int, int | None, dict], None] | None = None,
                    spread: Callable[[keras.Model, EpochRecord], float] | None = None
                    ) -> keras.callbacks.Callback:
    """The Keras callback that records each epoch, keeps the best, and hands it on.
    ``spread(model, record)``, when given, measures the standard error of an epoch that becomes
    the best (:func:`_spread`: on improving epochs only)."""
    import keras

    class _Hook(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            # read-only: the progress display and the hard time limit (which may raise)
            if on_batch is not None:
                on_batch(stage, int(batch) + 1, (self.params or {}).get("steps"), logs or {})

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            rec = EpochRecord(step=int(epoch), stage=stage,
                              metrics={k: float(logs.get(k, math.nan)) for k in keys},
                              seconds=time.perf_counter() - self._t)
            history.append(rec)
            loss, val_loss = rec.metrics["loss"], rec.metrics["val_loss"]
            if not (math.isfinite(loss) and math.isfinite(val_loss)):
                raise NonFiniteLoss(
                    f"the loss became {loss if not math.isfinite(loss) else val_loss} "
                    f"at step {rec.step} (stage {stage}); try a lower learning rate"
                )
            tracker.update(rec, layers)
            if spread is not None and tracker.best is rec:
                tracker.se = spread(self.model, rec)
            if on_epoch is not None:
                on_epoch(rec)

    return _Hook()


def _image_dataset(x: np.ndarray, y: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Validation batches beside augmented training (:class:`~tlsearch.train.augment.EpochBatches`)."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _spread(schedule: Schedule, x_val: Inputs, y_val: np.ndarray,
            batch_size: int) -> Callable[[keras.Model, EpochRecord], float]:
    """``(model, epoch record) -> the standard error of the epoch's value`` over the validation
    examples (:func:`tlsearch.train.validation.value_se`). ``val_accuracy``'s is binomial, read
    off the epoch; the others take one pass over the validation data."""
    n = len(y_val)

    def measure(model: keras.Model, rec: EpochRecord) -> float:
        from tlsearch.train.validation import predict_validation, value_se

        if schedule.objective == "val_accuracy":
            a = rec.value("val_accuracy")
            return math.sqrt(a * (1.0 - a) / n) if n > 1 and 0.0 <= a <= 1.0 else math.nan
        p, y = predict_validation(model, x_val, None if hasattr(x_val, "element_spec") else y_val,
                                  batch_size)
        return value_se(schedule.objective, p, y, schedule.objective_params)

    return measure


def default_stages() -> list[Stage]:
    """The recipe: a head on the frozen backbone (domain-adversarial when the trial adapts, a plain
    head otherwise), then the top blocks fine-tuned (gradually when ``unfreeze_every`` says so;
    domain-adversarial when the trial adapts through the backbone)."""
    return [DomainHeadStage(), DomainFineTuneStage()]


def planned_steps(params: TrialParams, schedule: Schedule,
                  stages: list[Stage] | None = None) -> int:
    """How many epochs a trial of ``params`` runs: the epochs of every stage that runs for it (its
    last epoch is at global step ``planned_steps(...) - 1``)."""
    plan = TrialPlan(params, schedule)
    return sum(stage.epochs(plan) for stage in stages or default_stages() if stage.runs(plan))


class _RunningTrial(TrialContext):
    """The trial's :class:`~tlsearch.train.context.TrialContext`: trains through Keras' ``fit``
    on the one global step, records every epoch in :attr:`history` and keeps the best epoch's
    weights in :attr:`tracker`."""

    def __init__(self, params: TrialParams, schedule: Schedule, data: Dataset,
                 source: BackboneSource, head: Head, *, y_train: np.ndarray, y_val: np.ndarray,
                 sample_weight: np.ndarray | None, augment: Augmenter | None,
                 on_epoch: Callable[[EpochRecord], None] | None,
                 on_batch: Callable[[int, int, int | None, dict], None] | None) -> None:
        super().__init__(params, schedule, data, source, head)
        #: one-hot labels, and the class weights as per-example weights (None: unweighted)
        self.y_train, self.y_val, self.sample_weight = y_train, y_val, sample_weight
        self.augment = augment
        self.on_epoch, self.on_batch = on_epoch, on_batch
        #: label-free selection keeps the last epoch and measures no standard error
        self.label_free = schedule.domain_selection not in ("", TARGET_LABELS)
        self.tracker = _Tracker(schedule.objective, schedule.maximize,
                                keep_last=self.label_free or schedule.keep_last)
        self.history: list[EpochRecord] = []

    def fit(self, model: keras.Model, x_train: Inputs, x_val: Inputs, *, stage: int,
            lr: float | None, layers: list[keras.layers.Layer], epochs: int,
            rates: dict[int, float] | None = None) -> None:
        s, bs, y_tr, y_va, sw = (self.schedule, self.schedule.batch_size, self.y_train,
                                 self.y_val, self.sample_weight)
        if lr is not None:  # a pooled head comes compiled, at its trial's rate
            self.source.compiler(model, lr, rates=rates)
        start, steps = self.step, None
        if isinstance(x_train, EpochBatches):  # augmented: these epochs' own orders and draws
            x_train, steps = x_train.dataset(start, epochs), x_train.steps
        own = None if hasattr(x_train, "element_spec") else \
            self.source.batches(self.params, x_train, x_val, y_tr, y_va, sw, bs, s.seed)
        if own is not None:  # text: batches of similar length
            x_train, x_val, _ = own
        callbacks = [*(own[2] if own is not None else ()),
                     _epoch_callback(stage, self.tracker, layers, self.on_epoch, self.history,
                                     s.metric_keys, self.on_batch,
                                     None if self.label_free or s.keep_last
                                     else _spread(s, x_val, y_va, bs))]
        if OBJECTIVES[s.objective].needs_callback:
            from tlsearch.train.validation import ValidationMetrics

            # first: the epoch hook (best epoch, pruning) reads what it writes into the logs
            callbacks.insert(0, ValidationMetrics(
                x_val, None if hasattr(x_val, "element_spec") else y_va, [s.objective],
                {s.objective: s.objective_params or {}}))
        if hasattr(x_train, "element_spec"):  # a tf.data pipeline carries its own labels
            model.fit(x_train, validation_data=x_val, epochs=start + epochs, initial_epoch=start,
                      steps_per_epoch=steps, shuffle=False,  # the pipeline orders its batches
                      callbacks=callbacks, verbose=0)
        else:
            model.fit(x_train, y_tr, sample_weight=sw, validation_data=(x_val, y_va),
                      batch_size=bs, epochs=start + epochs, initial_epoch=start, shuffle=True,
                      callbacks=callbacks, verbose=0)
        self.step = start + epochs

    def inputs(self) -> tuple[Inputs, Inputs]:
        if self.augment is None:
            return self.source.inputs(self.params)
        bs, data = self.schedule.batch_size, self.data
        parts = ((data.x_train, self.y_train) if self.sample_weight is None
                 else (data.x_train, self.y_train, self.sample_weight))
        return EpochBatches(self.augment, parts, bs), _image_dataset(data.x_val, self.y_val, bs)

    def restore_head(self) -> None:
        self.tracker.restore(self.head.layers)

    def epoch_callback(self, stage: int, layers: list[keras.layers.Layer],
                       extra_keys: tuple[str, ...]) -> keras.callbacks.Callback:
        return _epoch_callback(stage, self.tracker, layers, self.on_epoch, self.history,
                               (*self.schedule.metric_keys, *extra_keys), self.on_batch)


def run_trial(params: TrialParams, schedule: Schedule, data: Dataset, source: BackboneSource,
              on_epoch: Callable[[EpochRecord], None] | None = None,
              on_stage: Callable[[int], None] | None = None,
              stages: list[Stage] | None = None,
              on_batch: Callable[[int, int, int | None, dict], None] | None = None,
              number: int = 0) -> TrialResult:
    """Train one configuration through its stages and return its best epoch.

    ``on_epoch`` is called after every epoch and may raise to stop the trial (a pruner does).
    ``on_batch(stage, batches done, batches per epoch, logs)`` after every training batch (or
    group of batches run in one call) may read the running metrics, or raise to stop.
    ``number`` (the trial's) and the schedule's seed key the trial's augmentation: each epoch
    and batch draws its own transforms, the same on every run.
    Raises :class:`~tlsearch.errors.NonFiniteLoss` when the loss becomes NaN or infinite.
    """
    import keras

    from tlsearch.train.heads import Head

    t0 = time.perf_counter()
    keras.utils.set_random_seed(schedule.seed)
    y_tr = keras.utils.to_categorical(data.y_train, data.n_classes)
    y_va = keras.utils.to_categorical(data.y_val, data.n_classes)
    sw = None
    if schedule.class_weight:
        sw = np.array([schedule.class_weight.get(int(c), 1.0) for c in data.y_train], dtype=np.float32)
    head = Head(params.head_width, params.dropout, data.n_classes, schedule.seed)
    augment = dataset_augmenter(params, schedule.seed, number)
    state = _RunningTrial(params, schedule, data, source, head, y_train=y_tr, y_val=y_va,
                          sample_weight=sw, augment=augment, on_epoch=on_epoch, on_batch=on_batch)
    for stage in stages or default_stages():
        if not stage.runs(state):
            continue
        if on_stage:
            on_stage(stage.number)
        stage.run(state)

    tracker, label_free = state.tracker, state.label_free
    best = tracker.best
    if best is None:
        raise NonFiniteLoss("no epoch produced a finite objective")
    se = tracker.se if tracker.se is not None and math.isfinite(tracker.se) else None
    result = TrialResult(
        value=best.value(schedule.objective), best_step=best.step, best_stage=best.stage,
        history=state.history, weights=tracker.weights, unfrozen_blocks=state.unfrozen,
        cached=state.use_cache and state.cached, seconds=time.perf_counter() - t0,
        value_se=None if label_free else se,
    )
    if schedule.domain_selection and ((best.stage == 1 and state.use_cache) or (
            best.stage == 2 and state.domain_features is not None)):
        result.domain = {"criterion": schedule.domain_selection,
                         **domain_report(state, tracker.weights, best.stage)}
        if label_free:  # judged by the study's label-free criterion, stored beside the others
            value = result.domain.get(schedule.domain_selection)
            if value is None or not math.isfinite(value):
                raise NonFiniteLoss(f"{schedule.domain_selection} is not finite for this trial")
            result.value = float(value)
        result.seconds = time.perf_counter() - t0
    return result


def build_trained_model(params: TrialParams, weights: dict[str, list[np.ndarray]], n_classes: int,
                        source: BackboneSource, seed: int = 0):
    """The full model of a trial at its best epoch: the pretrained backbone plus the stored weights."""
    from tlsearch.train.heads import HEAD_LAYERS, Head, assemble_model

    backbone = source.build(params.backbone, params)
    head = Head(params.head_width, params.dropout, n_classes, seed)
    model = assemble_model(backbone, head)
    names = {layer.name for layer in backbone.model.layers} | set(HEAD_LAYERS)
    missing = set(weights) - names
    if missing:
        raise ValueError(f"stored weights name layers this model does not have: {sorted(missing)}")
    for name, values in weights.items():
        layer = next((l for l in head.layers if l.name == name), None)
        if layer is None:
            layer = backbone.model.get_layer(name)
        layer.set_weights(values)
    backbone.freeze(0)
    return model


def clear_state(source: BackboneSource) -> None:
    """Free what one trial left behind: Keras' global graph state and unreachable objects.

    Skipped when the trial compiled no new model (it reused a pooled head): then there is nothing
    of it to free, and a full collection costs more than such a trial's training (0.3 s a pass).
    """
    import keras

    if source.compiler.since_clear == 0:
        return
    source.compiler.since_clear = 0
    keras.backend.clear_session(free_memory=True)
