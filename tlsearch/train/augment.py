"""Data augmentation that fits the data: each transform its own searchable setting.

One strength for everything does not fit: a flipped digit or a flipped X-ray with a side marker is
another image, while microscopy and satellite images have no up or down. So ``flip`` (none,
horizontal, both), ``rotation``, ``zoom``, ``translation``, ``contrast`` and ``mixup`` (Zhang et
al., ICLR 2018) are separate parameters, and ``augmentation: s`` stays the shorthand it always was
(:func:`settings`): horizontal flips, rotation ``0.1 s``, zoom ``0.2 s``, translation ``0.1 s``.

An augmented trial sees new pixels every epoch, so its frozen part cannot be computed once: it
runs through the whole network (see :attr:`~tlsearch.train.stages.TrialState.use_cache`).
Augmentation is applied to training batches in the ``tf.data`` pipeline, never to validation, and
so never inside an exported model.

The same study seed gives the same numbers: every draw (the epoch's order, each batch's flips,
angles, zooms, contrasts and mixup blend) comes from stateless random ops keyed by (study seed,
trial number, epoch, batch index), so the parallel map may run batches in any order on any thread.
Other epochs and other trials draw other transforms.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

from tlsearch.params import TrialParams

__all__ = ["Augmentation", "Augmenter", "EpochBatches", "settings", "augments",
           "dataset_augmenter"]

_FLIP_MODES = {"horizontal": "horizontal", "both": "horizontal_and_vertical"}


@dataclass(frozen=True)
class Augmentation:
    """The transforms one trial applies (all off by default)."""

    flip: str = "none"
    rotation: float = 0.0
    zoom: float = 0.0
    translation: float = 0.0
    contrast: float = 0.0
    mixup: float = 0.0

    @property
    def any(self) -> bool:
        return self != Augmentation()


def settings(params: TrialParams) -> Augmentation:
    """The transforms of a trial: its own settings, or those the ``augmentation`` shorthand
    stands for (the study file may not give both)."""
    s = float(params.augmentation)
    if s > 0:
        return Augmentation("horizontal", 0.1 * s, 0.2 * s, 0.1 * s, float(params.contrast),
                            float(params.mixup))
    return Augmentation(params.flip, float(params.rotation), float(params.zoom),
                        float(params.translation), float(params.contrast), float(params.mixup))


def augments(params: TrialParams) -> bool:
    """Whether the trial changes its training images (and so cannot use cached features)."""
    return settings(params).any


def _layers(a: Augmentation, seed: int) -> list:
    """The Keras preprocessing layers of the transforms, in the order they apply. They are only
    asked for their transforms (:meth:`Augmenter.transform`), each with its own seed: their own
    seed generators (``seed`` here) are state that parallel calls would race on."""
    import keras

    L = keras.layers
    layers = []
    if a.flip != "none":
        layers.append(L.RandomFlip(_FLIP_MODES[a.flip], seed=seed))
    if a.rotation:
        layers.append(L.RandomRotation(a.rotation, seed=seed))
    if a.zoom:
        layers.append(L.RandomZoom(a.zoom, seed=seed))
    if a.translation:
        layers.append(L.RandomTranslation(a.translation, a.translation, seed=seed))
    if a.contrast:
        layers.append(L.RandomContrast(a.contrast, value_range=(0, 255), seed=seed))
    return layers


def _fold(key, data):
    import tensorflow as tf

    return tf.random.experimental.stateless_fold_in(key, tf.cast(data, "int64"))


@functools.cache
def _seeds_class() -> type:
    import keras

    class Seeds(keras.random.SeedGenerator):
        """A Keras seed generator without state: its ``n``-th draw is ``key`` folded with ``n``,
        so a layer drawing twice (a zoom's height and width) gets two independent seeds."""

        def __init__(self, key) -> None:  # no state variable: nothing for parallel calls to share
            self.key, self.draws = key, 0

        def next(self, ordered: bool = True):
            self.draws += 1
            return _fold(self.key, self.draws)

    return Seeds


def _seeds(key):
    return _seeds_class()(key)


#: what each key drawn from a batch's key is for (:meth:`Augmenter.key`)
_ORDER, _MIXUP = -1, -2


def _mixup(alpha: float) -> Callable:
    """Blend each batch with a shuffled copy of itself, labels (and sample weights) alike, by
    ``lam ~ Beta(alpha, alpha)``; ``seed`` makes it repeatable."""
    import tensorflow as tf

    def mix(batch, seed):
        x, *rest = batch
        x = tf.cast(x, "float32")
        g = tf.random.stateless_gamma([2], seed=seed, alpha=alpha)
        lam = g[0] / (g[0] + g[1])
        perm = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(x)[0]),
                                                        seed=tf.reverse(seed, [0]))

        def blend(t):
            t = tf.cast(t, "float32")
            return lam * t + (1.0 - lam) * tf.gather(t, perm)

        return (blend(x), *(blend(t) for t in rest))

    return mix


class Augmenter:
    """One trial's transforms, each batch's drawn from the key of (study ``seed``, ``trial``
    number, epoch, batch index) alone.

    Called on a ``tf.data`` pipeline of one epoch's ``(x, y[, weight])`` batches (``epoch``
    says which), it returns the augmented batches; :class:`EpochBatches` feeds training."""

    def __init__(self, augmentation: Augmentation, seed: int, trial: int = 0) -> None:
        self.augmentation, self.seed, self.trial = augmentation, int(seed), int(trial)
        self.layers = _layers(augmentation, self.seed)  # built here: not inside a traced map

    def key(self, epoch, batch=None):
        """The stateless seed (two int64) of an epoch, or of one batch of it."""
        import tensorflow as tf

        key = _fold(_fold(tf.constant([self.seed, 0], "int64"), self.trial), epoch)
        return key if batch is None else _fold(key, batch)

    def transform(self, batch, key):
        """One batch ``(x, y[, weight])`` augmented with the draws of ``key``: the geometric and
        contrast transforms, each its own seed, then mixup."""
        import tensorflow as tf

        x, *rest = batch
        x = tf.cast(x, "float32")
        for i, layer in enumerate(self.layers):
            t = layer.get_random_transformation(x, training=True, seed=_seeds(_fold(key, i)))
            x = layer.transform_images(x, t, training=True)
        if self.augmentation.mixup > 0:
            return _mixup(self.augmentation.mixup)((x, *rest), _fold(key, _MIXUP))
        return (x, *rest)

    def __call__(self, ds, epoch: int = 0):
        import tensorflow as tf

        return ds.enumerate().map(lambda i, b: self.transform(b, self.key(epoch, i)),
                                  num_parallel_calls=tf.data.AUTOTUNE)


@dataclass
class EpochBatches:
    """The training batches of an augmenting trial: each epoch its own order (drawn from the
    epoch's key) and its own transforms. :meth:`dataset` is the ``tf.data`` pipeline of the
    epochs ``start, ..., start + epochs - 1`` (the trial's global step), ``steps`` batches each,
    for one ``model.fit(..., steps_per_epoch=steps)``."""

    augmenter: Augmenter
    parts: tuple  # (x, y[, weight]), numpy
    batch_size: int

    @property
    def steps(self) -> int:
        return math.ceil(len(self.parts[0]) / self.batch_size)

    def dataset(self, start: int, epochs: int):
        import tensorflow as tf

        parts = tuple(tf.convert_to_tensor(p) for p in self.parts)
        n, aug = len(self.parts[0]), self.augmenter

        def epoch(e):  # (epoch, batch index, the batch's examples)
            order = tf.random.experimental.stateless_shuffle(
                tf.range(n, dtype="int64"), seed=_fold(aug.key(e), _ORDER))
            return (tf.data.Dataset.from_tensor_slices(order).batch(self.batch_size)
                    .enumerate().map(lambda i, idx: (e, i, idx)))

        def batch(e, i, idx):
            return aug.transform(tuple(tf.gather(p, idx) for p in parts), aug.key(e, i))

        ds = tf.data.Dataset.range(start, start + epochs).flat_map(epoch)
        ds = ds.apply(tf.data.experimental.assert_cardinality(epochs * self.steps))
        return ds.map(batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def dataset_augmenter(params: TrialParams, seed: int, trial: int = 0) -> Augmenter | None:
    """The trial's :class:`Augmenter` (``batches -> augmented batches`` for a ``tf.data``
    pipeline of ``(x, y[, weight])`` training batches), or None when the trial does not augment."""
    a = settings(params)
    return Augmenter(a, seed, trial) if a.any else None
