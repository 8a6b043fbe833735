"""Domain adaptation: train on a labelled source domain, serve an unlabelled target domain (DANN).

Domain-adversarial training (Ganin & Lempitsky, ICML 2015; Ganin et al., JMLR 2016) adds a domain
classifier behind a :class:`~tlsearch.layers.GradientReversal` layer to the usual label branch::

    x -> feature_extractor -> label_head                  label loss on labelled source batches
                           -> GradientReversal(lambda) -> Dense(width, relu) -> Dense(1)
                                                          domain loss, source = 0 / target = 1

The domain classifier learns to tell the domains apart; the extractor receives the reversed
gradient and learns features the classifier cannot separate, while the label loss keeps them
useful for the task. Only the label branch is served: :meth:`DANN.label_model`.

This module works on already computed inputs, the same for both domains:

* stage 1 (head only) on the cached pooled features: ``feature_extractor`` is the head's hidden
  Dense layer, ``label_head`` the rest of the head (dropout, softmax Dense);
* stage 2 on the cached activations at the freeze boundary: ``feature_extractor`` is the
  backbone's unfrozen top (``Backbone.split(n)[1]``) followed by the head's hidden layer.

Passing the head's own layer objects (not copies) means the model assembled for export from the
backbone and the head afterwards carries the adapted weights. A pipeline stage calls::

    model = DANN(extractor, label_head, domain_width=64, lambda_max=0.5, gamma=10.0,
                 class_weight=class_weights)             # {class index: weight} or None
    model.compile(keras.optimizers.Adam(lr))
    history = fit_dann(model, x_src, y_src, x_tgt, epochs=E, initial_epoch=e0,
                       validation_data=(x_src_val, y_src_val), callbacks=[...])
    report = selection_report(model, x_src_val, y_src_val, x_tgt_held_out, x_source_train=x_src)
    served = model.label_model(input_shape=(feature_dim,))  # or rebuild from the shared layers

It needs: labelled source inputs and labels (indices or one-hot), unlabelled target inputs
(any number; they are repeated), labelled source validation data, and for selection unlabelled
target inputs. ``history`` has the usual per-epoch logs, ``val_loss``/``val_accuracy`` included,
so the pipeline's best-epoch tracking and pruning callbacks need no change; the value to report
to Optuna for a label-free search is one of ``report``'s (see below), computed once per trial.

Model selection without target labels (what :func:`tlsearch.train.dann_selection.selection_report` gives, and what each promises):

* ``source_val_loss``: an unbiased estimate of the *source* risk only. It says nothing about the
  target: a model can fit the source perfectly and fail on the target.
* ``domain_accuracy`` of a *fresh* classifier on held-out features: near 0.5 means the two feature
  distributions are hard to tell apart (a small proxy A-distance). With the source risk it bounds
  the target risk (Ben-David et al., 2010) only up to the error of the best joint classifier,
  which is unknown: features can be aligned with the classes swapped, and then the target fails
  while both numbers look good. The DANN's own discriminator being fooled proves even less.
* ``dev_risk`` (Deep Embedded Validation, You et al., ICML 2019): the source validation loss
  reweighted by the density ratio ``p_target(f) / p_source(f)`` of the features, with a control
  variate that lowers its variance. It is an unbiased estimate of the target risk *if* the shift
  is a covariate shift in feature space (the same ``p(y | f)`` in both domains) and the ratio is
  estimated well. When the supports barely overlap the weights become huge and the estimate
  noisy; ``effective_sample_size`` in the report says how many source examples it rests on.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from tlsearch.layers import GradientReversal

__all__ = [
    "DANN",
    "DEV_MIN_ESS_FRACTION",
    "annealed_learning_rate",
    "batched",
    "fit_dann",
    "lambda_schedule",
    "make_domain_dataset",
]

#: below this fraction of the validation examples as effective sample size, DEV is flagged unreliable
DEV_MIN_ESS_FRACTION = 0.05

#: the paper's learning-rate annealing ``lr0 / (1 + alpha * p) ** beta``
ANNEAL_ALPHA = 10.0
ANNEAL_BETA = 0.75


def lambda_schedule(p, lambda_max: float = 1.0, gamma: float = 10.0):
    """``lambda_max * (2 / (1 + exp(-gamma * p)) - 1)``: 0 at the start of training, ~lambda_max at the end.

    Starting at 0 keeps the noisy gradient of an untrained domain classifier out of the features
    early on (Ganin et al., JMLR 2016, section 5.2.2). ``p`` (training progress) is in [0, 1]; a
    float gives a float, a tensor a tensor.
    """
    if isinstance(p, (int, float)):
        return lambda_max * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)
    return lambda_max * (2.0 / (1.0 + ops.exp(-gamma * p)) - 1.0)


def annealed_learning_rate(lr0: float, p):
    """The paper's annealing ``lr0 / (1 + 10 p) ** 0.75``: ends at ~0.17 lr0."""
    if isinstance(p, (int, float)):
        return lr0 / (1.0 + ANNEAL_ALPHA * p) ** ANNEAL_BETA
    return lr0 / ops.power(1.0 + ANNEAL_ALPHA * p, ANNEAL_BETA)


class DANN(keras.Model):
    """A label branch and a domain classifier behind gradient reversal, trained together.

    Args:
        feature_extractor: the trainable part shared by both branches (a keras Layer or Model), e.g.
            the head's hidden Dense layer on cached features, or a backbone's unfrozen top. The
            layers are used, not copied: a model built from the same layers sees the trained weights.
        label_head: maps features to class probabilities (``from_logits=False``) or logits.
        domain_width: units of the domain classifier's hidden layer (built here).
        lambda_max, gamma: the reversal strength schedule, see :func:`lambda_schedule`.
        lr_annealing: anneal the optimizer's learning rate as in the paper; needs a float learning
            rate, set at :meth:`compile`.
        class_weight: ``{class index: weight}`` for the label loss (the domain loss is unweighted).
        seed: seeds the domain classifier's initial weights.

    ``fit`` takes batches ``((x_source, x_target), y_source)`` (see :func:`make_domain_dataset`)
    and logs ``loss``, ``label_loss``, ``domain_loss``, ``domain_accuracy``, ``accuracy`` (source)
    and ``lambda``. Validation data are plain labelled source batches ``(x, y)``: ``val_loss`` and
    ``val_accuracy`` are the label branch's, so early stopping and pruning callbacks work as for any
    model. Labels may be class indices or one-hot rows.

    Training progress ``p`` comes from a step counter kept in the model, so lambda and the learning
    rate follow the schedule across several ``fit`` calls; :meth:`set_schedule` says how many steps
    the stage has (:func:`fit_dann` does it).
    """

    def __init__(self, feature_extractor, label_head, *, domain_width: int = 64,
                 lambda_max: float = 1.0, gamma: float = 10.0, lr_annealing: bool = False,
                 class_weight: dict[int, float] | None = None, from_logits: bool = False,
                 seed: int | None = 0, name: str = "dann", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.feature_extractor = feature_extractor
        self.label_head = label_head
        self.lambda_max = float(lambda_max)
        self.gamma = float(gamma)
        self.lr_annealing = bool(lr_annealing)
        self.from_logits = bool(from_logits)
        self.class_weight = dict(class_weight) if class_weight else None
        init = keras.initializers.GlorotUniform(seed=seed)
        self.grl = GradientReversal(0.0, name="gradient_reversal")
        self.domain_hidden = keras.layers.Dense(int(domain_width), activation="relu",
                                                kernel_initializer=init, name="domain_hidden")
        self.domain_out = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(
            seed=None if seed is None else seed + 1), name="domain_logit")
        # schedule state: variables, so that set_schedule between fits needs no retrace
        self.schedule_step = self.add_weight(name="schedule_step", shape=(), initializer="zeros",
                                             trainable=False, dtype="float32")
        self._start_step = self.add_weight(name="schedule_start", shape=(), initializer="zeros",
                                           trainable=False, dtype="float32")
        self._total_steps = self.add_weight(name="schedule_total", shape=(), initializer="zeros",
                                            trainable=False, dtype="float32")
        self._lr0: float | None = None
        self._trackers = {n: keras.metrics.Mean(name=n) for n in
                          ("loss", "label_loss", "domain_loss", "domain_accuracy", "accuracy")}
        self._extra_metrics: list = []

    # ---- configuration ------------------------------------------------------------------------

    def compile(self, optimizer="adam", *, metrics=None, **kwargs) -> None:
        """Like ``keras.Model.compile``, without ``loss``: the two losses are fixed by the method.

        ``metrics`` are extra label metrics, updated with ``(y, predictions)`` on source batches in
        training and validation (give them labels in the format you feed).
        """
        if kwargs.get("loss") is not None:
            raise ValueError("DANN sets its own losses (label and domain); do not pass `loss`")
        kwargs.pop("loss", None)
        super().compile(optimizer=optimizer, **kwargs)
        self._extra_metrics = list(metrics or [])
        if self.lr_annealing:
            lr = self.optimizer._learning_rate
            if not isinstance(lr, keras.Variable):
                raise ValueError("lr_annealing needs an optimizer with a float learning rate, "
                                 "not a schedule")
            self._lr0 = float(ops.convert_to_numpy(lr))

    def set_schedule(self, total_steps: int, start_step: float | None = None) -> None:
        """Progress ``p`` goes from 0 at ``start_step`` (default: now) to 1 after ``total_steps`` steps."""
        now = float(ops.convert_to_numpy(self.schedule_step))
        self._start_step.assign(now if start_step is None else float(start_step))
        self._total_steps.assign(float(total_steps))

    def progress(self):
        """Training progress in [0, 1]; 1 when no schedule was set (lambda then stays at lambda_max)."""
        total = ops.convert_to_tensor(self._total_steps)
        done = ops.convert_to_tensor(self.schedule_step) - ops.convert_to_tensor(self._start_step)
        return ops.where(total > 0, ops.clip(done / ops.maximum(total, 1.0), 0.0, 1.0), 1.0)

    @property
    def metrics(self):
        return [*self._trackers.values(), *self._extra_metrics]

    # ---- forward --------------------------------------------------------------------------------

    def call(self, x, training=False):
        """The label branch: class probabilities (or logits with ``from_logits``)."""
        return self.label_head(self.feature_extractor(x, training=training), training=training)

    def domain_logits_from_features(self, features, training=False, reverse: bool = True):
        """The domain classifier's logits (target = positive). ``reverse=False`` skips the reversal
        (same forward values), to compare gradients with and without it."""
        h = self.grl(features) if reverse else features
        return self.domain_out(self.domain_hidden(h, training=training), training=training)

    def domain_logits(self, x, training=False, reverse: bool = True):
        return self.domain_logits_from_features(self.feature_extractor(x, training=training),
                                                training=training, reverse=reverse)

    # ---- training -------------------------------------------------------------------------------

    def _label_losses(self, y, pred):
        """Per-example label losses; class indices or one-hot rows, decided at trace time."""
        if len(y.shape) >= 2 and y.shape[-1] is not None and y.shape[-1] > 1:
            return keras.losses.categorical_crossentropy(y, pred, from_logits=self.from_logits)
        y = ops.reshape(y, (-1,))
        return keras.losses.sparse_categorical_crossentropy(y, pred, from_logits=self.from_logits)

    @staticmethod
    def _class_index(y):
        if len(y.shape) >= 2 and y.shape[-1] is not None and y.shape[-1] > 1:
            return ops.cast(ops.argmax(y, axis=-1), "int32")
        return ops.cast(ops.reshape(y, (-1,)), "int32")

    def _example_weights(self, y, sample_weight):
        w = None
        if self.class_weight:
            n = max(self.class_weight) + 1  # classes past the table (and missing ones) weigh 1
            table = ops.convert_to_tensor([float(self.class_weight.get(i, 1.0)) for i in range(n)] + [1.0])
            w = ops.take(table, ops.minimum(self._class_index(y), n))
        if sample_weight is not None:
            sw = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
            w = sw if w is None else w * sw
        return w

    def train_step(self, data):
        import tensorflow as tf

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if not (isinstance(x, (tuple, list)) and len(x) == 2):
            raise ValueError("DANN.fit needs batches ((x_source, x_target), y_source); "
                             "make_domain_dataset builds them")
        x_s, x_t = x
        p = self.progress()
        lam = lambda_schedule(p, self.lambda_max, self.gamma)
        self.grl.set_lambda(lam)
        if self.lr_annealing:
            self.optimizer._learning_rate.assign(annealed_learning_rate(self._lr0, p))
        n_s = tf.shape(tf.nest.flatten(x_s)[0])[0]
        # one pass over source and target together, as the reference implementations do
        x_all = tf.nest.map_structure(lambda a, b: tf.concat([a, tf.cast(b, a.dtype)], 0), x_s, x_t)
        with tf.GradientTape() as tape:
            feats = self.feature_extractor(x_all, training=True)
            pred = self.label_head(feats[:n_s], training=True)
            per_example = self._label_losses(y, pred)
            w = self._example_weights(y, sample_weight)
            label_loss = ops.mean(per_example if w is None else per_example * w)
            d_logits = ops.reshape(self.domain_logits_from_features(feats, training=True), (-1,))
            d_true = ops.cast(ops.arange(ops.shape(d_logits)[0]) >= n_s, "float32")
            domain_loss = ops.mean(keras.losses.binary_crossentropy(
                d_true[:, None], d_logits[:, None], from_logits=True))
            loss = label_loss + domain_loss
            if self.losses:
                loss = loss + ops.sum(self.losses)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        self.schedule_step.assign_add(1.0)

        d_acc = ops.mean(ops.cast(ops.cast(d_logits > 0, "float32") == d_true, "float32"))
        acc = ops.mean(ops.cast(ops.cast(ops.argmax(pred, axis=-1), "int32") == self._class_index(y), "float32"))
        for name, v in (("loss", loss), ("label_loss", label_loss), ("domain_loss", domain_loss),
                        ("domain_accuracy", d_acc), ("accuracy", acc)):
            self._trackers[name].update_state(v)
        for m in self._extra_metrics:
            m.update_state(y, pred)
        return {**{m.name: m.result() for m in self.metrics}, "lambda": lam}

    def test_step(self, data):
        """Validation on labelled source batches: the label branch's loss and accuracy."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        pred = self(x, training=False)
        per_example = self._label_losses(y, pred)
        self._trackers["loss"].update_state(per_example, sample_weight=sample_weight)
        correct = ops.cast(ops.cast(ops.argmax(pred, axis=-1), "int32") == self._class_index(y), "float32")
        self._trackers["accuracy"].update_state(correct, sample_weight=sample_weight)
        for m in self._extra_metrics:
            m.update_state(y, pred)
        out = {"loss": self._trackers["loss"].result(), "accuracy": self._trackers["accuracy"].result()}
        out.update({m.name: m.result() for m in self._extra_metrics})
        return out

    # ---- what is served and what selection needs ----------------------------------------------

    def label_model(self, input_shape: tuple | None = None, name: str = "label_model"):
        """The label branch alone, sharing the trained layers: what an export serves.

        Uses the extractor's own inputs when it is a functional model; otherwise ``input_shape``
        (one example, no batch axis) is needed, e.g. ``(feature_dim,)`` on cached features.
        """
        inputs = getattr(self.feature_extractor, "inputs", None)
        if not inputs:
            if input_shape is None:
                raise ValueError("label_model needs input_shape: the feature extractor has no inputs")
            inputs = keras.Input(tuple(input_shape), name="features")
        elif len(inputs) == 1:
            inputs = inputs[0]
        return keras.Model(inputs, self.call(inputs), name=name)

    def features(self, x, batch_size: int = 256) -> np.ndarray:
        """The extractor's output (what the domain classifier sees), in inference mode."""
        return batched(lambda b: self.feature_extractor(b, training=False), x, batch_size)

    def example_losses(self, x, y, batch_size: int = 256) -> np.ndarray:
        """Unweighted label loss per example, in inference mode (the input of :func:`dev_risk`)."""
        preds = batched(lambda b: self(b, training=False), x, batch_size)
        return np.asarray(self._label_losses(ops.convert_to_tensor(y), ops.convert_to_tensor(preds)))

    def own_domain_accuracy(self, x_source, x_target, batch_size: int = 256) -> float:
        """Accuracy of this model's own domain classifier (0.5 = fooled). A fooled discriminator is
        weak evidence of aligned features: use :func:`heldout_domain_accuracy` for a fresh one."""
        ls = batched(lambda b: self.domain_logits(b, training=False), x_source, batch_size)
        lt = batched(lambda b: self.domain_logits(b, training=False), x_target, batch_size)
        return float(np.mean(np.concatenate([ls.ravel() <= 0, lt.ravel() > 0])))


def batched(fn, x, batch_size: int) -> np.ndarray:
    import tensorflow as tf

    n = len(tf.nest.flatten(x)[0])
    outs = []
    for i in range(0, n, batch_size):
        b = tf.nest.map_structure(lambda a: a[i:i + batch_size], x)
        outs.append(np.asarray(fn(b)))
    return np.concatenate(outs) if outs else np.zeros((0,))


# ---- data and fitting -------------------------------------------------------------------------


def make_domain_dataset(x_source, y_source, x_target, *, batch_size: int = 64, seed: int = 0):
    """(dataset, steps per epoch): labelled source batches zipped with unlabelled target batches.

    One epoch is one pass over the source; the target is shuffled and repeated, so it may be
    smaller or larger than the source. Elements are ``((x_source, x_target), y_source)``. Inputs
    are arrays (or dicts of arrays for text models), with the same structure in both domains.
    """
    import tensorflow as tf

    n_s = len(tf.nest.flatten(x_source)[0])
    n_t = len(tf.nest.flatten(x_target)[0])
    if n_s == 0 or n_t == 0:
        raise ValueError(f"domain adaptation needs source and target examples (got {n_s} and {n_t})")
    src = (tf.data.Dataset.from_tensor_slices((x_source, y_source))
           .shuffle(n_s, seed=seed, reshuffle_each_iteration=True).batch(batch_size))
    tgt = (tf.data.Dataset.from_tensor_slices(x_target)
           .shuffle(n_t, seed=seed + 1, reshuffle_each_iteration=True).repeat()
           .batch(batch_size, drop_remainder=n_t >= batch_size))
    ds = tf.data.Dataset.zip(src, tgt).map(lambda s, t: ((s[0], t), s[1]))
    return ds.prefetch(tf.data.AUTOTUNE), math.ceil(n_s / batch_size)


def fit_dann(model: DANN, x_source, y_source, x_target, *, epochs: int, initial_epoch: int = 0,
             batch_size: int = 64, validation_data=None, callbacks=None, seed: int = 0,
             verbose: int = 0, schedule_epochs: int | None = None, schedule_done: int = 0):
    """Train one stage of ``epochs`` epochs; lambda (and the annealed rate) restart with the stage,
    unless ``schedule_epochs`` says how many epochs the schedule spans (several stages) and
    ``schedule_done`` how many of them earlier stages trained (lambda goes on from there).

    ``initial_epoch`` only numbers the epochs, so that the callbacks of a two-stage run see one
    global count (stage 2 starts where stage 1 stopped). Returns Keras' ``History``.
    """
    ds, steps = make_domain_dataset(x_source, y_source, x_target, batch_size=batch_size, seed=seed)
    if schedule_epochs is None:
        model.set_schedule(total_steps=epochs * steps)
    else:
        now = float(ops.convert_to_numpy(model.schedule_step))
        model.set_schedule(total_steps=schedule_epochs * steps,
                           start_step=now - schedule_done * steps)
    return model.fit(ds, epochs=initial_epoch + epochs, initial_epoch=initial_epoch,
                     validation_data=validation_data, callbacks=callbacks, verbose=verbose,
                     shuffle=False)  # the dataset shuffles itself
