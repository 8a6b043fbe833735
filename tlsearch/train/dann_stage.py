"""Domain adaptation as stage 1 of a trial: DANN on the frozen backbone's cached features.

When a trial's ``domain_lambda_max`` is not ``off``, stage 1 trains the head as a DANN
(:mod:`tlsearch.train.dann`): the head's hidden layer is the feature extractor, feeding the label
branch (dropout, softmax) and, through :class:`~tlsearch.layers.GradientReversal`, a domain
classifier (source 0, target 1). Both domains' inputs are the backbone's pooled features, computed
once and cached (:meth:`~tlsearch.train.features.BackboneSource.target_outputs`), so an adapted
trial costs little more than a head trial. The epochs are counted on the trial's one global step,
and each records the domain classifier's training accuracy (``domain_accuracy``), the domain loss
and lambda next to the usual numbers.

With ``domain_stage: head`` only stage 1 adapts: stage 2 (when it runs: only with labelled target
data, see :func:`tlsearch.config_checks.domain_problems`) fine-tunes the top blocks from the adapted
head on the source labels alone, judged on the labelled target data like every other epoch. With
``domain_stage: backbone`` (:func:`~tlsearch.params.adapts_backbone`) stage 2 is a DANN too
(:class:`DomainFineTuneStage`): the unfrozen top blocks and the head's hidden layer are the feature
extractor, on the cached activations at the freeze boundary of both domains (or, where the
backbone cannot be cut there, the whole backbone on the raw inputs), BatchNorm kept frozen as in
the plain stage 2, at ``lr_stage2``; lambda's ramp spans both stages' epochs and goes on where
stage 1 left it, and the domain classifier goes on from stage 1's. The domain classifier is not
part of the trial's stored weights: export serves the label branch only.

A quarter of the target examples (at least 4) never train the domain classifier: they are held out
to judge how well the features are aligned, in :func:`domain_report`, for adapted and plain trials
alike.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tlsearch.params import adapts, adapts_backbone
from tlsearch.train.context import TrialContext, TrialPlan
from tlsearch.train.rows import pick
from tlsearch.train.stages import GradualFineTuneStage, HeadStage, stage2_rates, unfreeze_target

__all__ = ["DomainHeadStage", "DomainFineTuneStage", "backbone_dann", "target_split",
           "domain_report", "TARGET_LABELS", "DOMAIN_KEYS"]

#: how a study with ``data.target`` judges its trials
TARGET_LABELS = "target_validation"  # the objective on ``data.target_validation``

#: the numbers an adapted epoch records besides the study's metrics
DOMAIN_KEYS = ("domain_accuracy", "domain_loss", "label_loss", "lambda")


def target_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(trained on, held out) row indices of the target data: a seeded quarter held out."""
    order = np.random.default_rng([seed, 13]).permutation(n)
    held = max(4, n // 4)
    return np.sort(order[held:]), np.sort(order[:held])


class DomainHeadStage(HeadStage):
    """Stage 1: the plain head (:class:`HeadStage`), or a DANN head when the trial adapts."""

    def run(self, state: TrialContext) -> None:
        if not adapts(state.params):
            return super().run(state)
        import keras

        from tlsearch.train.dann import DANN, fit_dann

        p, s, data = state.params, state.schedule, state.data
        f_tr, f_va = state.source.frozen_outputs(p.backbone, 0, p)
        f_t = state.source.target_outputs(p.backbone, p)
        f_t = f_t[target_split(len(f_t), s.seed)[0]]
        head = state.head
        model = DANN(head.dense, keras.Sequential([head.dropout, head.out], name="label_head"),
                     domain_width=int(p.domain_width), lambda_max=float(p.domain_lambda_max),
                     gamma=float(p.domain_gamma), class_weight=s.class_weight, seed=s.seed)
        optimizer = state.source.compiler.optimizer or keras.optimizers.Adam
        model.compile(optimizer(learning_rate=p.lr_stage1))
        state.source.compiler.since_clear += 1  # a new model: clear_state frees it
        y_tr = keras.utils.to_categorical(data.y_train, data.n_classes)
        y_va = keras.utils.to_categorical(data.y_val, data.n_classes)
        epochs = self.epochs(state)
        hook = state.epoch_callback(self.number, [head.dense, head.out], DOMAIN_KEYS)
        fit_dann(model, np.asarray(f_tr), y_tr, np.asarray(f_t), epochs=epochs,
                 initial_epoch=state.step, batch_size=s.batch_size,
                 validation_data=(np.asarray(f_va), y_va), callbacks=[hook], seed=s.seed,
                 schedule_epochs=_schedule_epochs(state))
        state.step += epochs
        state.dann = model  # stage 2 through the backbone goes on from its domain classifier


def _schedule_epochs(plan: TrialPlan) -> int:
    """The epochs lambda's ramp spans: stage 1's, and stage 2's where it adapts too."""
    stage2 = DomainFineTuneStage()
    both = adapts_backbone(plan.params) and stage2.runs(plan)
    return int(plan.schedule.stage1_epochs) + (stage2.epochs(plan) if both else 0)


class DomainFineTuneStage(GradualFineTuneStage):
    """Stage 2: the plain fine-tuning (:class:`GradualFineTuneStage`), or a DANN through the
    unfrozen top blocks when the trial adapts through the backbone. Without labelled target data
    only such trials run stage 2 (a plain one would fine-tune on source labels alone, unjudged);
    the others stop after stage 1, as before."""

    def runs(self, plan: TrialPlan) -> bool:
        if not super().runs(plan):
            return False
        label_free = plan.schedule.domain_selection not in ("", TARGET_LABELS)
        return not label_free or adapts_backbone(plan.params)

    def run(self, state: TrialContext) -> None:
        if not adapts_backbone(state.params):
            return super().run(state)
        from tlsearch.train.dann import fit_dann

        s = state.schedule
        model, inputs, layers = backbone_dann(state)
        (x_tr, y_tr), (x_va, y_va), x_t = inputs
        epochs = self.epochs(state)
        hook = state.epoch_callback(self.number, layers, DOMAIN_KEYS)
        fit_dann(model, x_tr, y_tr, x_t, epochs=epochs, initial_epoch=state.step,
                 batch_size=s.batch_size, validation_data=(x_va, y_va), callbacks=[hook],
                 seed=s.seed, schedule_epochs=_schedule_epochs(state),
                 schedule_done=int(s.stage1_epochs))
        state.step += epochs
        state.domain_features = _stage2_features(state, model, layers, inputs)


def backbone_dann(state: TrialContext):
    """(model, ((x_train, y_train), (x_val, y_val), x_target), layers): the compiled stage-2 DANN of
    a trial that adapts through the backbone, its inputs, and the layers its epochs keep.

    The extractor is the top ``unfreeze_blocks`` blocks and the head's hidden layer, made trainable
    as the plain stage 2 makes them (BatchNorm frozen per the schedule), the head holding its best
    stage-1 weights. On the cached activations at the freeze boundary (the target's cached like
    the source's) where the backbone can be cut there; else the whole backbone on raw inputs,
    its frozen bottom in inference mode. ``x_target`` is the target's training part
    (:func:`target_split`): the held-out quarter never trains the domain classifier."""
    import keras

    from tlsearch.train.dann import DANN

    p, s, data, head = state.params, state.schedule, state.data, state.head
    backbone = state.backbone or state.source.build(p.backbone, p)  # float32: DANN's own step
    state.backbone = backbone
    n, stem = unfreeze_target(p, backbone)
    trainable = backbone.freeze(n, keep_bn_frozen=s.keep_bn_frozen, stem=stem)
    if state.use_cache and not stem and backbone.can_cut(n):
        x_tr, x_va = state.source.frozen_outputs(p.backbone, n, p, backbone=backbone)
        x_t = state.source.target_outputs(p.backbone, p, n, backbone=backbone)
        _, top = backbone.split(n)
        inp = keras.Input(x_tr.shape[1:], name="boundary")
        extractor = keras.Model(inp, head.dense(top(inp)), name="top_extractor")
        x_tr, x_va, x_t = np.asarray(x_tr), np.asarray(x_va), np.asarray(x_t)
    else:
        inp = backbone.model.input
        extractor = keras.Model(inp, head.dense(backbone.model(inp)), name="backbone_extractor")
        x_tr, x_va = state.source.inputs(p)
        x_t = state.source.target_inputs(p)
        state.cached = False
    n_t = len(next(iter(x_t.values())) if isinstance(x_t, dict) else x_t)
    x_t = pick(x_t, target_split(n_t, s.seed)[0])
    if not head.out.built:
        head.out.build((None, int(p.head_width)))
    state.restore_head()  # the head's best stage-1 weights
    state.unfrozen = n
    layers = head.layers + [backbone.model.get_layer(name) for name in trainable]
    model = DANN(extractor, keras.Sequential([head.dropout, head.out], name="label_head"),
                 domain_width=int(p.domain_width), lambda_max=float(p.domain_lambda_max),
                 gamma=float(p.domain_gamma), class_weight=s.class_weight, seed=s.seed)
    before = state.dann
    if before is not None and before.domain_hidden.built:  # go on from stage 1's classifier
        for mine, theirs in ((model.domain_hidden, before.domain_hidden),
                             (model.domain_out, before.domain_out)):
            mine.build((None, int(theirs.kernel.shape[0])))
            mine.set_weights(theirs.get_weights())
    cls = state.source.compiler.optimizer or keras.optimizers.Adam
    rates = stage2_rates(backbone, layers, p.lr_decay)
    if rates:
        from tlsearch.train.rates import layerwise

        optimizer = layerwise(cls)(learning_rate=p.lr_stage2, scales=rates)
    else:
        optimizer = cls(learning_rate=p.lr_stage2)
    model.compile(optimizer)
    state.source.compiler.since_clear += 1  # a new model: clear_state frees it
    y_tr = keras.utils.to_categorical(data.y_train, data.n_classes)
    y_va = keras.utils.to_categorical(data.y_val, data.n_classes)
    return model, ((x_tr, y_tr), (x_va, y_va), x_t), layers


def _stage2_features(state: TrialContext, model, layers, inputs):
    """``weights -> (hidden, probabilities)`` of source training, source validation and held-out
    target rows through the stage-2 extractor holding ``weights``: what :func:`domain_report`
    reads when the kept epoch is in stage 2."""
    from tlsearch.train.dann import batched

    (x_tr, _), (x_va, _), _ = inputs
    p, s = state.params, state.schedule
    if state.cached:  # the kept epoch's rows, through the same extractor
        x_t = state.source.target_outputs(p.backbone, p, state.unfrozen, backbone=state.backbone)
        x_t = np.asarray(x_t)
    else:
        x_t = state.source.target_inputs(p)
    n_t = len(next(iter(x_t.values())) if isinstance(x_t, dict) else x_t)
    x_t = pick(x_t, target_split(n_t, s.seed)[1])
    bs = state.schedule.batch_size

    def features(weights):
        for layer in layers:
            if layer.name in weights:
                layer.set_weights(weights[layer.name])
        out = []
        for x in (x_tr, x_va, x_t):
            h = model.features(x, bs)
            out.append((h, batched(lambda b: model.label_head(b, training=False), h, bs)))
        return out

    return features


def head_outputs(weights: dict[str, list[np.ndarray]], f: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(hidden features, class probabilities) of the stored head on pooled features."""
    w1, b1 = weights["clf_dense"]
    w2, b2 = weights["clf_out"]
    h = np.maximum(np.asarray(f, np.float64) @ w1 + b1, 0.0)
    z = h @ w2 + b2
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return h, z / z.sum(axis=1, keepdims=True)


def _losses(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-example cross-entropy of class probabilities for integer labels."""
    return -np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0))


def domain_report(state: TrialContext, weights: dict[str, list[np.ndarray]],
                  stage: int = 1) -> dict[str, Any]:
    """How the kept head sees both domains, from its weights on the cached pooled features (or,
    for a kept epoch of stage 2 adapting through the backbone, ``stage`` 2, through its top
    blocks holding ``weights``: :attr:`TrialContext.domain_features`).

    * ``val_loss``, ``val_accuracy`` on the validation data: the source's, or the labelled target
      data when the study has it (``on`` says which);
    * ``domain_accuracy``: a fresh linear domain classifier on the head's hidden features of
      source vs held-out target examples (0.5: the domains look alike to it). The source side is
      the source validation split; with labelled target data, which takes the validation split's
      place, it is the source training split (the only source examples there are);
    * the label-free criteria (:mod:`tlsearch.train.dann_selection`; lower is better, none
      negative), one of which judges the trial without labelled target data (``criterion``):
      ``bound_proxy`` (validation error + max(0, 2 x domain_accuracy - 1), the two measurable
      terms of Ben-David et al.'s bound on the target error); ``reverse_validation`` (with
      ``reverse_validation_error``: a classifier trained on the held-out target examples labelled
      by the head, scored on the labelled source examples); ``iwv`` (with
      ``iwv_effective_sample_size``: the source examples' losses weighted by density ratios
      estimated once, on the backbone's pooled features every trial shares); ``entropy`` and
      ``info_max`` (of the head's predictions on the held-out target examples);
    * ``dev_risk`` with ``dev_reliable``, ``dev_effective_sample_size``, ``dev_mean_weight``:
      Deep Embedded Validation (You et al., 2019), for comparison, on the same source examples and
      their losses; unreliable when the features of the domains barely overlap
      (:mod:`tlsearch.train.dann_selection`).
    """
    from tlsearch.train.dann_selection import (bound_proxy, dev_diagnostics, dev_risk,
                                               dev_weights, heldout_domain_accuracy, info_max,
                                               iwv_risk, prediction_entropy, reverse_validation,
                                               shared_weights)

    p, s, data = state.params, state.schedule, state.data
    # the backbone's pooled features: the head's inputs in stage 1, and for every trial the
    # shared space importance weights are estimated in
    f_tr, f_va = state.source.frozen_outputs(p.backbone, 0, p)
    f_t = state.source.target_outputs(p.backbone, p)
    f_t = f_t[target_split(len(f_t), s.seed)[1]]
    if stage == 2 and state.domain_features is not None:
        # the kept epoch adapted through the backbone: through its top blocks
        (h_tr, probs_tr), (h_va, probs), (h_t, probs_t) = state.domain_features(weights)
    else:
        h_tr, probs_tr = head_outputs(weights, f_tr)
        h_va, probs = head_outputs(weights, f_va)
        h_t, probs_t = head_outputs(weights, f_t)
    y = np.asarray(data.y_val)
    losses = _losses(probs, y)
    accuracy = float(np.mean(probs.argmax(1) == y))
    labelled = bool(data.target_validation)
    if labelled:
        # the validation data is target data: the source side is the source's only labelled
        # examples, the training split (the head has seen them, so DEV's losses are optimistic)
        h_src, src_losses, h_fit = h_tr, _losses(probs_tr, np.asarray(data.y_train)), None
        y_src, f_src, f_fit = np.asarray(data.y_train), f_tr, None
    else:
        h_src, src_losses, h_fit = h_va, losses, h_tr
        y_src, f_src, f_fit = y, f_va, f_tr
    dacc = heldout_domain_accuracy(h_src, h_t, seed=s.seed)
    rv = reverse_validation(h_t, probs_t, h_src, y_src, n_classes=data.n_classes, seed=s.seed)
    # one set of weights for every trial of the study: on the backbone's features, not the head's
    shared = shared_weights(f_src, f_t, source_train_features=f_fit, seed=s.seed)
    out: dict[str, Any] = {
        "adapted": adapts(p), "on": "target_validation" if labelled else "source",
        "val_loss": float(losses.mean()), "val_accuracy": accuracy,
        "domain_accuracy": dacc, "bound_proxy": bound_proxy(accuracy, dacc),
        "reverse_validation": rv["loss"], "reverse_validation_error": rv["error"],
        "iwv": iwv_risk(src_losses, shared),
        "iwv_effective_sample_size": dev_diagnostics(shared)["effective_sample_size"],
        "entropy": prediction_entropy(probs_t), "info_max": info_max(probs_t),
        "held_out_target": int(len(h_t)),
    }
    # with source training features the discriminator is fitted on them (as in the paper) and
    # the weighted examples are new to it; without (they are the weighted examples), cross-fitted
    w = dev_weights(h_src, h_t, source_train_features=h_fit, seed=s.seed)
    out["dev_risk"] = dev_risk(h_src, src_losses, h_t, weights=w)
    out.update({"dev_" + k: v for k, v in dev_diagnostics(w).items()})
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in out.items()}
