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
from typing import Any, Callable, cast

import numpy as np

from tlsearch.data import Dataset
from tlsearch.errors import NonFiniteLoss
from tlsearch.params import OBJECTIVES, TrialParams
from tlsearch.train.augment import EpochBatches, dataset_augmenter
from tlsearch.train.features import BackboneSource
from tlsearch.train.dann_stage import DomainHeadStage
from tlsearch.train.stages import GradualFineTuneStage, Stage, TrialState

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

#: the per-epoch numbers every trial's history keeps: the training loss and the Keras-computed
#: objectives (a study's own callback objective, and its threshold, are added to them)
METRIC_KEYS = ("loss", *(n for n, o in OBJECTIVES.items() if not o.needs_callback))


@dataclass(frozen=True)
class Schedule:
    """The fixed part of the schedule and how epochs are judged."""

    stage1_epochs: int = 5
    stage2_epochs: int = 5
    batch_size: int = 32
    objective: str = "val_loss"
    #: the objective's parameters (``specificity`` for ``val_sens_at_spec`` ...); a study passes
    #: them resolved (``search.inputs.resolve_objective_params``), None takes the defaults
    objective_params: dict | None = None
    class_weight: dict[int, float] | None = None
    keep_bn_frozen: bool = True
    seed: int = 0
    #: with ``data.target``: how trials are judged, ``train.dann_stage.TARGET_LABELS`` (the
    #: objective on labelled target data, best epoch) or ``LABEL_FREE`` (a label-free proxy on
    #: the last epoch); "" without target data
    domain_selection: str = ""
    #: keep the last epoch rather than the best: a refit (:mod:`tlsearch.export.refit`) trains on
    #: the validation examples too, so nothing is left to choose an epoch on
    keep_last: bool = False

    @property
    def maximize(self) -> bool:
        return OBJECTIVES[self.objective].direction == "maximize"

    @property
    def metric_keys(self) -> tuple[str, ...]:
        """What each epoch records: :data:`METRIC_KEYS`, plus the objective computed by the
        validation callback (and the threshold it chose) when Keras does not compute it."""
        o = OBJECTIVES[self.objective]
        if not o.needs_callback:
            return METRIC_KEYS
        return (*METRIC_KEYS, o.name, *([f"{o.name}_threshold"] if o.threshold else []))


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


def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """Balanced weights ``n / (k * count)``, as scikit-learn's ``class_weight='balanced'``."""
    counts = np.bincount(y, minlength=n_classes).astype(float)
    return {i: float(len(y) / (n_classes * c)) if c else 0.0 for i, c in enumerate(counts)}


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

    def update(self, record: EpochRecord, layers: list) -> None:
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

    def restore(self, layers: list) -> None:
        """Put the best epoch's weights back into ``layers`` (the next stage goes on from them)."""
        for layer in layers:
            if layer.name in self.weights:
                layer.set_weights(self.weights[layer.name])


def _epoch_callback(stage: int, tracker: _Tracker, layers: list, on_epoch, history: list,
                    keys: tuple[str, ...] = METRIC_KEYS, on_batch=None, spread=None):
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


def _image_dataset(x, y, batch_size: int):
    """Validation batches beside augmented training (:class:`~tlsearch.train.augment.EpochBatches`)."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _spread(schedule: Schedule, x_val, y_val, batch_size: int):
    """``(model, epoch record) -> the standard error of the epoch's value`` over the validation
    examples (:func:`tlsearch.train.validation.value_se`). ``val_accuracy``'s is binomial, read
    off the epoch; the others take one pass over the validation data."""
    n = len(y_val)

    def measure(model, rec: EpochRecord) -> float:
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
    head otherwise), then the top blocks fine-tuned (gradually when ``unfreeze_every`` says so)."""
    return [DomainHeadStage(), GradualFineTuneStage()]


def planned_steps(params: TrialParams, schedule: Schedule,
                  stages: list[Stage] | None = None) -> int:
    """How many epochs a trial of ``params`` runs: the epochs of every stage that runs for it (its
    last epoch is at global step ``planned_steps(...) - 1``)."""
    state = TrialState(params=params, schedule=schedule, data=cast(Dataset, None), source=None,
                       head=None, fit=lambda *a, **k: None)
    return sum(stage.epochs(state) for stage in stages or default_stages() if stage.runs(state))


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
    from tlsearch.train.dann_stage import LABEL_FREE

    label_free = schedule.domain_selection == LABEL_FREE
    tracker = _Tracker(schedule.objective, schedule.maximize,
                       keep_last=label_free or schedule.keep_last)
    history: list[EpochRecord] = []
    bs = schedule.batch_size
    augment = dataset_augmenter(params, schedule.seed, number)
    state = TrialState(params=params, schedule=schedule, data=data, source=source, head=head,
                       fit=lambda *a, **k: None)

    def fit(model, x_train, x_val, *, stage: int, lr: float | None, layers: list,
            epochs: int, rates: dict[int, float] | None = None) -> None:
        """Train ``epochs`` more epochs from the trial's global step, then move the step on.
        ``rates``: per-variable multiples of ``lr`` (:mod:`tlsearch.train.rates`)."""
        if lr is not None:  # a pooled head comes compiled, at its trial's rate
            source.compiler(model, lr, rates=rates)
        start, steps = state.step, None
        if isinstance(x_train, EpochBatches):  # augmented: these epochs' own orders and draws
            x_train, steps = x_train.dataset(start, epochs), x_train.steps
        own = None if hasattr(x_train, "element_spec") else \
            source.batches(params, x_train, x_val, y_tr, y_va, sw, bs, schedule.seed)
        if own is not None:  # text: batches of similar length
            x_train, x_val, _ = own
        callbacks = [*(own[2] if own is not None else ()),
                     _epoch_callback(stage, tracker, layers, on_epoch, history,
                                     schedule.metric_keys, on_batch,
                                     None if label_free or schedule.keep_last
                                     else _spread(schedule, x_val, y_va, bs))]
        if OBJECTIVES[schedule.objective].needs_callback:
            from tlsearch.train.validation import ValidationMetrics

            # first: the epoch hook (best epoch, pruning) reads what it writes into the logs
            callbacks.insert(0, ValidationMetrics(
                x_val, None if hasattr(x_val, "element_spec") else y_va, [schedule.objective],
                {schedule.objective: schedule.objective_params or {}}))
        if hasattr(x_train, "element_spec"):  # a tf.data pipeline carries its own labels
            model.fit(x_train, validation_data=x_val, epochs=start + epochs, initial_epoch=start,
                      steps_per_epoch=steps, shuffle=False,  # the pipeline orders its batches
                      callbacks=callbacks, verbose=0)
        else:
            model.fit(x_train, y_tr, sample_weight=sw, validation_data=(x_val, y_va),
                      batch_size=bs, epochs=start + epochs, initial_epoch=start, shuffle=True,
                      callbacks=callbacks, verbose=0)
        state.step = start + epochs

    def model_inputs():
        if augment is None:
            return source.inputs(params)
        parts = (data.x_train, y_tr) if sw is None else (data.x_train, y_tr, sw)
        return EpochBatches(augment, parts, bs), _image_dataset(data.x_val, y_va, bs)

    state.fit = fit
    state.extra["inputs"] = model_inputs
    state.extra["restore_head"] = lambda: tracker.restore(head.layers)
    state.extra["epoch_callback"] = lambda stage, layers, extra_keys: _epoch_callback(
        stage, tracker, layers, on_epoch, history, (*schedule.metric_keys, *extra_keys))
    for stage in stages or default_stages():
        if not stage.runs(state):
            continue
        if on_stage:
            on_stage(stage.number)
        stage.run(state)

    best = tracker.best
    if best is None:
        raise NonFiniteLoss("no epoch produced a finite objective")
    se = tracker.se if tracker.se is not None and math.isfinite(tracker.se) else None
    result = TrialResult(
        value=best.value(schedule.objective), best_step=best.step, best_stage=best.stage,
        history=history, weights=tracker.weights, unfrozen_blocks=state.unfrozen,
        cached=state.use_cache and state.cached, seconds=time.perf_counter() - t0,
        value_se=None if label_free else se,
    )
    if schedule.domain_selection and best.stage == 1 and state.use_cache:
        from tlsearch.train.dann_stage import domain_report

        result.domain = {"criterion": schedule.domain_selection,
                         **domain_report(state, tracker.weights)}
        if label_free:
            result.value = float(result.domain["bound_proxy"])
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
