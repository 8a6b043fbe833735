"""The classification head, and the traced copies of it that cached stage-1 trials reuse.

The head is dense(width, relu), dropout, dense(classes, softmax): :class:`Head` builds its layers,
for the model that trains through the backbone and for the exported model alike.

A cached stage-1 trial trains a few thousand parameters on in-memory features: an epoch takes a
fraction of a second, while building, compiling and tracing a new Keras model, and clearing it
afterwards, took several times longer (measured on 2 CPU cores). So :class:`HeadPool` builds and
traces the head on features once per (feature size, width, classes, seed) and *resets* it between
trials: weights to the values a fresh :class:`Head` with the same seed starts from, the optimizer's
slots to zero, the dropout rate and learning rate to the trial's. The result is the same trial,
number for number (tested against a fresh model); only the tracing is skipped.
"""

from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

__all__ = ["Head", "assemble_model", "HeadPool", "PooledHead", "RateDropout", "HEAD_LAYERS"]

#: the names of the head's layers, as stored with a trial's weights
HEAD_LAYERS = ("clf_dense", "clf_dropout", "clf_out")


class RateDropout(keras.layers.Layer):
    """Dropout whose rate is a variable, so one traced training step serves every rate.

    It draws the masks ``keras.layers.Dropout(rate, seed=seed)`` draws (same seed generator, same
    stateless op), and a rate of 0 leaves the inputs unchanged, as Dropout does.
    """

    def __init__(self, seed: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(seed)
        # a plain tf.Variable is none of the layer's weights: never stored with a trial's weights
        self.rate = tf.Variable(0.0, trainable=False, dtype="float32")

    def call(self, inputs, training=False):
        if not training:
            return inputs
        seed = self.seed_generator.next()
        seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), "int32")  # as keras.random does
        return tf.nn.experimental.stateless_dropout(inputs, rate=self.rate, seed=seed)


class Head:
    """The new classifier's layers. Shared between the cached-feature model and the full model,
    so weights trained on one are the other's. ``dropout_layer`` replaces the plain Dropout (the
    pooled head's :class:`RateDropout`)."""

    def __init__(self, width: int, dropout: float, n_classes: int, seed: int,
                 dropout_layer: keras.layers.Layer | None = None) -> None:
        self.init = keras.initializers.GlorotUniform(seed=seed)
        self.dense = keras.layers.Dense(width, activation="relu", kernel_initializer=self.init,
                                        name=HEAD_LAYERS[0])
        self.dropout = dropout_layer or keras.layers.Dropout(dropout, seed=seed, name=HEAD_LAYERS[1])
        self.out = keras.layers.Dense(n_classes, activation="softmax", kernel_initializer=self.init,
                                      name=HEAD_LAYERS[2])

    def __call__(self, x):
        return self.out(self.dropout(self.dense(x)))

    @property
    def layers(self) -> list:
        return [self.dense, self.dropout, self.out]


def assemble_model(backbone: Any, head: Head, name: str = "tlsearch_model") -> keras.Model:
    """Raw inputs -> backbone -> head: the model that is exported.

    The backbone follows the training flag: its frozen layers run in inference mode whatever the
    flag (:meth:`~tlsearch.backbones.base.Backbone.freeze`), its unfrozen blocks train normally.
    """
    inputs = backbone.model.input  # one tensor for images, a dict of token arrays for text
    feats = backbone.model(inputs)
    return keras.Model(inputs, head(feats), name=name)


class PooledHead:
    """A :class:`Head` on features, compiled once and reset for each trial."""

    def __init__(self, dim: int, width: int, n_classes: int, seed: int,
                 compile_fn: Callable) -> None:
        self.head = Head(width, 0.0, n_classes, seed,
                         dropout_layer=RateDropout(seed, name=HEAD_LAYERS[1]))
        self.dense, self.dropout, self.out = self.head.layers
        inp = keras.Input((dim,), name="features")
        self.model = keras.Model(inp, self.head(inp), name="head_on_features")
        compile_fn(self.model, 1e-3)
        self.model.optimizer.build(self.model.trainable_variables)
        self._seed_state = np.array(self.dropout.seed_generator.state.numpy())
        self._opt_start = [np.array(v.numpy()) for v in self.model.optimizer.variables]

    @property
    def layers(self) -> list:
        """The layers whose weights a trial keeps (the dropout rate is no weight)."""
        return [self.dense, self.out]

    def reset(self, dropout: float, lr: float) -> None:
        """Back to the state of a freshly built and compiled head with the same seed."""
        for layer in (self.dense, self.out):
            layer.kernel.assign(self.head.init(layer.kernel.shape))  # a seeded initializer repeats
            layer.bias.assign(np.zeros(layer.bias.shape, dtype="float32"))
        self.dropout.rate.assign(float(dropout))
        self.dropout.seed_generator.state.assign(self._seed_state)
        opt = self.model.optimizer
        for v, start in zip(opt.variables, self._opt_start):
            v.assign(start)
        opt.learning_rate.assign(float(lr))


class HeadPool:
    """One traced head model per shape, reset for each trial instead of rebuilt."""

    def __init__(self, compile_fn: Callable) -> None:
        self.compile_fn = compile_fn
        self._heads: dict[tuple, PooledHead] = {}

    def get(self, dim: int, width: int, n_classes: int, seed: int, dropout: float,
            lr: float) -> PooledHead:
        key = (int(dim), int(width), int(n_classes), int(seed))
        head = self._heads.get(key)
        if head is None:
            head = self._heads[key] = PooledHead(*key, self.compile_fn)
        head.reset(dropout, lr)
        return head

    def __len__(self) -> int:
        return len(self._heads)
