"""The two-stage transfer pipeline, with no search engine inside.

Stage 1 trains a new head (dense, dropout, softmax) on a frozen backbone. Stage 2 unfreezes the top
N blocks, BatchNorm excepted, recompiles at the lower stage-2 rate and goes on training. The backbone
always runs in inference mode (``training=False``), so BatchNorm keeps its ImageNet statistics and
the frozen part computes the same numbers every epoch: that is what lets
:mod:`tlsearch.cache` compute it once.

Epochs are counted on one global step across both stages (stage 2 starts at ``initial_epoch =
stage1_epochs``), so whoever listens to :class:`EpochRecord` sees one curve. The trial's value is its
best epoch's, and the weights kept are that epoch's.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tlsearch.backbones import Backbone, build_backbone, resolve_weights
from tlsearch.cache import FeatureCache, cache_key
from tlsearch.data import Dataset
from tlsearch.errors import NonFiniteLoss

__all__ = [
    "TrialParams",
    "Schedule",
    "EpochRecord",
    "TrialResult",
    "BackboneSource",
    "Head",
    "run_trial",
    "assemble_model",
    "class_weights",
    "build_trained_model",
    "clear_state",
]

_FEATURE_VERSION = 1  # bump when the way frozen outputs are computed changes
_PREFETCH_BYTES = 1 << 30  # boundaries computed ahead of need, at most this much in all


@dataclass(frozen=True)
class TrialParams:
    """One point of the search space: plain values, whoever chose them."""

    backbone: str
    unfreeze_blocks: int = 0
    head_width: int = 128
    dropout: float = 0.2
    lr_stage1: float = 1e-3
    lr_stage2: float = 1e-5
    augmentation: float = 0.0
    pooling: str = "cls"
    max_length: int = 128


@dataclass(frozen=True)
class Schedule:
    """The fixed part of the schedule and how epochs are judged."""

    stage1_epochs: int = 5
    stage2_epochs: int = 5
    batch_size: int = 32
    objective: str = "val_loss"
    class_weight: dict[int, float] | None = None
    keep_bn_frozen: bool = True
    seed: int = 0

    @property
    def maximize(self) -> bool:
        return self.objective != "val_loss"


@dataclass
class EpochRecord:
    step: int
    stage: int
    loss: float
    val_loss: float
    val_accuracy: float
    val_auc: float
    seconds: float = 0.0

    def value(self, objective: str) -> float:
        return float(getattr(self, objective))


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

    def history_dicts(self) -> list[dict]:
        return [asdict(r) for r in self.history]


def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """Balanced weights ``n / (k * count)``, as scikit-learn's ``class_weight='balanced'``."""
    counts = np.bincount(y, minlength=n_classes).astype(float)
    return {i: float(len(y) / (n_classes * c)) if c else 0.0 for i, c in enumerate(counts)}


class Head:
    """The new classifier: dense(width, relu), dropout, dense(classes, softmax). Shared between the
    cached-feature model and the full model, so weights trained on one are the other's."""

    names = ("clf_dense", "clf_dropout", "clf_out")

    def __init__(self, width: int, dropout: float, n_classes: int, seed: int) -> None:
        import keras

        init = keras.initializers.GlorotUniform(seed=seed)
        self.dense = keras.layers.Dense(width, activation="relu", kernel_initializer=init,
                                        name="clf_dense")
        self.dropout = keras.layers.Dropout(dropout, seed=seed, name="clf_dropout")
        self.out = keras.layers.Dense(n_classes, activation="softmax", kernel_initializer=init,
                                      name="clf_out")

    def __call__(self, x):
        return self.out(self.dropout(self.dense(x)))

    @property
    def layers(self) -> list:
        return [self.dense, self.dropout, self.out]


def assemble_model(backbone: Backbone, head: Head, name: str = "tlsearch_model", *,
                   training: bool = False):
    """Raw inputs -> backbone -> head: the model that is exported.

    The backbone runs in inference mode unless ``training`` (fine-tuning with BatchNorm updating
    its statistics, which training from scratch needs). Frozen BatchNorm layers stay in inference
    mode either way: Keras 3 never uses batch statistics in a layer that is not trainable.
    """
    import keras

    inputs = backbone.model.input  # one tensor for images, a dict of token arrays for text
    feats = backbone.model(inputs, training=training)
    return keras.Model(inputs, head(feats), name=name)


class BackboneSource:
    """Builds the study's backbones and serves their frozen outputs from the feature cache."""

    def __init__(self, entries: dict, data: Dataset, image_size: int, cache: FeatureCache,
                 *, seed: int = 0, base_dir: Path | None = None, batch_size: int = 64,
                 prefetch_unfrozen: int = 0) -> None:
        self.entries = entries
        self.data = data
        self.image_size = image_size
        self.cache = cache
        self.seed = seed
        self.base_dir = base_dir
        self.batch_size = batch_size
        #: boundaries (1..this many unfrozen blocks) computed in the same forward pass as the first
        #: frozen output a backbone needs: one pass per image instead of one per boundary
        self.prefetch_unfrozen = prefetch_unfrozen
        self._max_unfreeze: dict[str, int] = {}
        self._heads = None

    @property
    def heads(self):
        """Traced head-on-features models, reset for each cached stage-1 trial instead of rebuilt."""
        if self._heads is None:
            from tlsearch.headpool import HeadPool

            self._heads = HeadPool(_compile_pooled)
        return self._heads

    def options(self, params: TrialParams | None) -> dict:
        """Build options that change what a backbone computes (text backbones use them)."""
        return {}

    def key_options(self, params: TrialParams | None, boundary: str) -> dict:
        """The options that the frozen outputs at ``boundary`` depend on (part of the cache key)."""
        return self.options(params)

    def inputs(self, params: TrialParams | None):
        """(train, validation) inputs of the backbone's model: the data itself for images, token
        arrays for text."""
        return self.data.x_train, self.data.x_val

    def build(self, name: str, params: TrialParams | None = None) -> Backbone:
        return build_backbone(self.entries[name], self.image_size, seed=self.seed,
                              base_dir=self.base_dir, options=self.options(params))

    def max_unfreeze(self, name: str) -> int:
        if name not in self._max_unfreeze:
            bb = self.build(name)
            self._max_unfreeze[name] = bb.max_unfreeze
            del bb
        return self._max_unfreeze[name]

    def _key(self, name: str, boundary: str, params: TrialParams | None) -> str:
        import keras

        _, fingerprint = resolve_weights(self.entries[name], self.base_dir)
        if fingerprint == "random":
            fingerprint = f"random:seed={self.seed}"
        return cache_key(backbone=name, weights=fingerprint, size=self.image_size,
                         data=self.data.fingerprint, boundary=boundary,
                         options=self.key_options(params, boundary), keras=keras.__version__,
                         version=_FEATURE_VERSION)

    def frozen_outputs(self, name: str, n_unfrozen: int, params: TrialParams | None = None,
                       backbone: Backbone | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Outputs of the frozen part for train and validation inputs, computed once and cached.

        ``n_unfrozen == 0``: the pooled features. Otherwise the activations at the freeze boundary.
        """
        def compute():
            import keras

            bb = backbone or self.build(name, params)

            def output(k):
                return bb.model.output if k == 0 else bb.boundary_output(k)

            n_images = len(self.data.x_train) + len(self.data.x_val)
            wanted, extra_bytes = [n_unfrozen], 0
            for k in range(self.prefetch_unfrozen + 1):
                if k == n_unfrozen or k > bb.max_unfreeze or (k > 0 and not bb.can_cut(k)):
                    continue
                if self.cache.contains(self._key(name, _boundary(k), params)):
                    continue
                size = 4 * n_images * math.prod(int(d) for d in output(k).shape[1:])
                if extra_bytes + size > _PREFETCH_BYTES:
                    break
                wanted.append(k)
                extra_bytes += size
            outputs = [output(k) for k in wanted]
            model = keras.Model(bb.model.input, outputs)  # a dict of token arrays for text
            per_split = []
            for x in self.inputs(params):
                got = model.predict(x, batch_size=self.batch_size, verbose=0)
                got = got if len(wanted) > 1 else [got]
                per_split.append([np.asarray(a, dtype=np.float32) for a in got])
            for i, k in enumerate(wanted[1:], start=1):
                self.cache.put(self._key(name, _boundary(k), params),
                               (per_split[0][i], per_split[1][i]), describe=f"{name} {_boundary(k)}")
            return per_split[0][0], per_split[1][0]

        key = self._key(name, _boundary(n_unfrozen), params)
        return self.cache.get_or_compute(key, compute, describe=f"{name} {_boundary(n_unfrozen)}")


def _boundary(n_unfrozen: int) -> str:
    return "pooled" if n_unfrozen == 0 else f"below-top-{n_unfrozen}"


class _Tracker:
    """Keeps the best epoch's value and the weights of the layers that were training then."""

    def __init__(self, objective: str, maximize: bool) -> None:
        self.objective = objective
        self.maximize = maximize
        self.best: EpochRecord | None = None
        self.weights: dict[str, list[np.ndarray]] = {}

    def update(self, record: EpochRecord, layers: list) -> None:
        v = record.value(self.objective)
        if not math.isfinite(v):
            return
        if self.best is not None:
            b = self.best.value(self.objective)
            if (v <= b) if self.maximize else (v >= b):
                return
        self.best = record
        self.weights = {layer.name: [np.array(w) for w in layer.get_weights()] for layer in layers
                        if layer.weights}


def _epoch_callback(stage: int, tracker: _Tracker, layers: list, on_epoch, history: list):
    import keras

    class _Hook(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            rec = EpochRecord(
                step=int(epoch), stage=stage, loss=float(logs.get("loss", math.nan)),
                val_loss=float(logs.get("val_loss", math.nan)),
                val_accuracy=float(logs.get("val_accuracy", math.nan)),
                val_auc=float(logs.get("val_auc", math.nan)),
                seconds=time.perf_counter() - self._t,
            )
            history.append(rec)
            if not (math.isfinite(rec.loss) and math.isfinite(rec.val_loss)):
                raise NonFiniteLoss(
                    f"the loss became {rec.loss if not math.isfinite(rec.loss) else rec.val_loss} "
                    f"at step {rec.step} (stage {stage}); try a lower learning rate"
                )
            tracker.update(rec, layers)
            if on_epoch is not None:
                on_epoch(rec)

    return _Hook()


def _compile(model, lr: float, steps_per_execution: int = 1) -> None:
    import keras

    global _built_since_clear
    _built_since_clear += 1
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss=keras.losses.CategoricalCrossentropy(),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")],
        jit_compile=False,  # XLA made head training several times slower on CPU
        steps_per_execution=steps_per_execution,
    )


def _compile_pooled(model, lr: float) -> None:
    """A head on features takes microseconds per step: run 16 steps per call into TensorFlow.
    Same batches in the same order, so the same numbers; only Python's per-step cost goes."""
    _compile(model, lr, steps_per_execution=16)


#: Keras models compiled since the last :func:`clear_state`; a trial that only reused pooled heads
#: leaves nothing to clear
_built_since_clear = 0


def _augmenter(strength: float, seed: int):
    import keras

    L = keras.layers
    return keras.Sequential([
        L.RandomFlip("horizontal", seed=seed),
        L.RandomRotation(0.1 * strength, seed=seed),
        L.RandomZoom(0.2 * strength, seed=seed),
        L.RandomTranslation(0.1 * strength, 0.1 * strength, seed=seed),
    ], name="augment")


def _image_dataset(x, y, batch_size: int, *, augment=None, shuffle_seed: int | None = None,
                   sample_weight=None):
    import tensorflow as tf

    parts = (x, y) if sample_weight is None else (x, y, sample_weight)
    ds = tf.data.Dataset.from_tensor_slices(parts)
    if shuffle_seed is not None:
        ds = ds.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if augment is not None:
        def aug(xb, *rest):
            return (augment(tf.cast(xb, "float32"), training=True), *rest)

        ds = ds.map(aug, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def run_trial(params: TrialParams, schedule: Schedule, data: Dataset, source: BackboneSource,
              on_epoch: Callable[[EpochRecord], None] | None = None,
              on_stage: Callable[[int], None] | None = None) -> TrialResult:
    """Train one configuration through both stages and return its best epoch.

    ``on_epoch`` is called after every epoch and may raise to stop the trial (a pruner does).
    Raises :class:`~tlsearch.errors.NonFiniteLoss` when the loss becomes NaN or infinite.
    """
    import keras

    t0 = time.perf_counter()
    keras.utils.set_random_seed(schedule.seed)
    y_tr = keras.utils.to_categorical(data.y_train, data.n_classes)
    y_va = keras.utils.to_categorical(data.y_val, data.n_classes)
    sw = None
    if schedule.class_weight:
        sw = np.array([schedule.class_weight.get(int(c), 1.0) for c in data.y_train], dtype=np.float32)
    head = Head(params.head_width, params.dropout, data.n_classes, schedule.seed)
    tracker = _Tracker(schedule.objective, schedule.maximize)
    history: list[EpochRecord] = []
    use_cache = source.cache is not None and params.augmentation == 0
    e1, e2 = schedule.stage1_epochs, schedule.stage2_epochs
    bs = schedule.batch_size
    augment = _augmenter(params.augmentation, schedule.seed) if params.augmentation > 0 else None
    backbone: Backbone | None = None

    def fit(model, x_train, x_val, *, stage, lr, layers, epochs, initial_epoch):
        if lr is not None:  # a pooled head comes compiled, at its trial's rate
            _compile(model, lr)
        hook = _epoch_callback(stage, tracker, layers, on_epoch, history)
        if hasattr(x_train, "element_spec"):  # a tf.data pipeline carries its own labels
            model.fit(x_train, validation_data=x_val, epochs=epochs, initial_epoch=initial_epoch,
                      callbacks=[hook], verbose=0)
        else:
            model.fit(x_train, y_tr, sample_weight=sw, validation_data=(x_val, y_va),
                      batch_size=bs, epochs=epochs, initial_epoch=initial_epoch, shuffle=True,
                      callbacks=[hook], verbose=0)

    def model_inputs():
        if augment is None:
            return source.inputs(params)
        return (_image_dataset(data.x_train, y_tr, bs, augment=augment, shuffle_seed=schedule.seed,
                               sample_weight=sw),
                _image_dataset(data.x_val, y_va, bs))

    # ---- stage 1: the backbone frozen, the head trained
    if on_stage:
        on_stage(1)
    if use_cache:
        f_tr, f_va = source.frozen_outputs(params.backbone, 0, params)
        pooled = source.heads.get(f_tr.shape[-1], params.head_width, data.n_classes,
                                  schedule.seed, params.dropout, params.lr_stage1)
        model = pooled.model
        fit(model, f_tr, f_va, stage=1, lr=None, layers=pooled.layers, epochs=e1,
            initial_epoch=0)
        # stage 2 draws its dropout masks where stage 1 left off, as one model trained through would
        if hasattr(head.dropout, "seed_generator"):  # Dropout(0) has none
            head.dropout.seed_generator.state.assign(pooled.dropout.seed_generator.state.value)
    else:
        backbone = source.build(params.backbone, params)
        backbone.freeze(0)
        model = assemble_model(backbone, head)
        x_tr, x_va = model_inputs()
        fit(model, x_tr, x_va, stage=1, lr=params.lr_stage1, layers=head.layers, epochs=e1,
            initial_epoch=0)

    # ---- stage 2: the top N blocks unfrozen, BatchNorm kept frozen, a lower rate
    n = int(params.unfreeze_blocks)
    cached2 = False
    if n > 0 and e2 > 0:
        if on_stage:
            on_stage(2)
        if backbone is None:
            backbone = source.build(params.backbone, params)
        n = min(n, backbone.max_unfreeze)
        trainable = backbone.freeze(n, keep_bn_frozen=schedule.keep_bn_frozen)
        bn_training = not schedule.keep_bn_frozen
        layers = head.layers + [backbone.model.get_layer(name) for name in trainable]
        if use_cache and backbone.can_cut(n):
            b_tr, b_va = source.frozen_outputs(params.backbone, n, params, backbone=backbone)
            _, top = backbone.split(n)
            inp = keras.Input(b_tr.shape[1:], name="boundary")
            model = keras.Model(inp, head(top(inp, training=bn_training)), name="top_on_boundary")
            _restore(head, tracker)
            fit(model, b_tr, b_va, stage=2, lr=params.lr_stage2, layers=layers, epochs=e1 + e2,
                initial_epoch=e1)
            cached2 = True
        else:
            model = assemble_model(backbone, head, training=bn_training)
            _restore(head, tracker)
            x_tr, x_va = model_inputs()
            fit(model, x_tr, x_va, stage=2, lr=params.lr_stage2, layers=layers, epochs=e1 + e2,
                initial_epoch=e1)
    else:
        n = 0

    best = tracker.best
    if best is None:
        raise NonFiniteLoss("no epoch produced a finite objective")
    result = TrialResult(
        value=best.value(schedule.objective), best_step=best.step, best_stage=best.stage,
        history=history, weights=tracker.weights, unfrozen_blocks=n,
        cached=use_cache and (n == 0 or cached2), seconds=time.perf_counter() - t0,
    )
    del model, backbone
    return result


def _restore(head: Head, tracker: _Tracker) -> None:
    """Stage 2 goes on from the best stage-1 head, not the last epoch's (the head is built by now)."""
    for layer in head.layers:
        if layer.name in tracker.weights:
            layer.set_weights(tracker.weights[layer.name])


def build_trained_model(params: TrialParams, weights: dict[str, list[np.ndarray]], n_classes: int,
                        source: BackboneSource, seed: int = 0):
    """The full model of a trial at its best epoch: the pretrained backbone plus the stored weights."""
    backbone = source.build(params.backbone, params)
    head = Head(params.head_width, params.dropout, n_classes, seed)
    model = assemble_model(backbone, head)
    names = {layer.name for layer in backbone.model.layers} | set(Head.names)
    missing = set(weights) - names
    if missing:
        raise ValueError(f"stored weights name layers this model does not have: {sorted(missing)}")
    for name, values in weights.items():
        layer = head_layer = next((l for l in head.layers if l.name == name), None)
        if head_layer is None:
            layer = backbone.model.get_layer(name)
        layer.set_weights(values)
    backbone.freeze(0)
    return model


def clear_state() -> None:
    """Free what one trial left behind: Keras' global graph state and unreachable objects.

    Skipped when the trial compiled no new model (it reused a pooled head): then there is nothing
    of it to free, and a full collection costs more than such a trial's training (0.3 s a pass).
    """
    import keras

    global _built_since_clear
    if _built_since_clear == 0:
        return
    _built_since_clear = 0
    keras.backend.clear_session(free_memory=True)
