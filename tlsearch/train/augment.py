"""Data augmentation that fits the data: each transform its own searchable setting.

One strength for everything does not fit: a flipped digit or a flipped X-ray with a side marker is
another image, while microscopy and satellite images have no up or down. So ``flip`` (none,
horizontal, both), ``rotation``, ``zoom``, ``translation``, ``contrast`` and ``mixup`` (Zhang et
al., ICLR 2018) are separate parameters, and ``augmentation: s`` stays the shorthand it always was
(:func:`settings`): horizontal flips, rotation ``0.1 s``, zoom ``0.2 s``, translation ``0.1 s``.

An augmented trial sees new pixels every epoch, so its frozen part cannot be computed once: it
runs through the whole network (see :attr:`~tlsearch.train.stages.TrialState.use_cache`).
Augmentation is applied to training batches in the ``tf.data`` pipeline, never to validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from tlsearch.params import TrialParams

__all__ = ["Augmentation", "settings", "augments", "dataset_augmenter"]

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


def _layers(a: Augmentation, seed: int):
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
    return keras.Sequential(layers, name="augment") if layers else None


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


def dataset_augmenter(params: TrialParams, seed: int) -> Callable[[Any], Any] | None:
    """``batches -> augmented batches`` for a ``tf.data`` pipeline of ``(x, y[, weight])``
    training batches, or None when the trial does not augment."""
    a = settings(params)
    if not a.any:
        return None

    def augment(ds):
        import tensorflow as tf

        layers = _layers(a, seed)
        if layers is not None:
            def geometric(xb, *rest):
                return (layers(tf.cast(xb, "float32"), training=True), *rest)

            ds = ds.map(geometric, num_parallel_calls=tf.data.AUTOTUNE)
        if a.mixup > 0:
            seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
            ds = tf.data.Dataset.zip((ds, seeds)).map(_mixup(a.mixup),
                                                      num_parallel_calls=tf.data.AUTOTUNE)
        return ds

    return augment

