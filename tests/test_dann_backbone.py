"""Domain adaptation through the backbone (``domain_adaptation.stage: backbone``): stage 2 as a
DANN whose extractor is the unfrozen top blocks and the head's hidden layer. Tiny twins."""

from __future__ import annotations

import numpy as np
import pytest

from tlsearch.backbones.base import Backbone
from tlsearch.config import BackboneEntry
from tlsearch.data import Dataset
from tlsearch.params import TrialParams
from tlsearch.train.cache import FeatureCache
from tlsearch.params import DEFAULT_DOMAIN_CRITERION as LABEL_FREE
from tlsearch.train.dann_stage import backbone_dann
from tlsearch.train.features import BackboneSource
from tlsearch.train.pipeline import Schedule, planned_steps, run_trial


@pytest.fixture(scope="module")
def data() -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 120, (48, 32, 32, 3)).astype(np.uint8)
    y = np.arange(48) % 3
    x[y == 1, :12] = 250
    x[y == 2, :, :12] = 250
    ds = Dataset("image", x[:36], y[:36], x[36:], y[36:], ["a", "b", "c"], fingerprint="bb-dann")
    ds.x_target = (255 - rng.integers(0, 120, (32, 32, 32, 3))).astype(np.uint8)
    ds.target_fingerprint = "bb-dann-target"
    return ds


def _params(**kw) -> TrialParams:
    base = dict(unfreeze_blocks=1, head_width=8, dropout=0.0, lr_stage1=1e-2, lr_stage2=1e-3,
                domain_lambda_max=0.5, domain_width=8, domain_stage="backbone")
    return TrialParams("tiny_cnn", **{**base, **kw})


def _source(data: Dataset) -> BackboneSource:
    return BackboneSource({"tiny_cnn": BackboneEntry(name="tiny_cnn")}, data, 32,
                          FeatureCache(None, 1 << 30))


def _context(data: Dataset, params: TrialParams, schedule: Schedule):
    """A trial's context before its stages run (the head not trained yet)."""
    import keras

    from tlsearch.train.heads import Head
    from tlsearch.train.pipeline import _RunningTrial

    keras.utils.set_random_seed(schedule.seed)
    head = Head(params.head_width, params.dropout, data.n_classes, schedule.seed)
    return _RunningTrial(params, schedule, data, _source(data), head,
                         y_train=keras.utils.to_categorical(data.y_train, 3),
                         y_val=keras.utils.to_categorical(data.y_val, 3), sample_weight=None,
                         augment=None, on_epoch=None, on_batch=None)


def _uncut(monkeypatch) -> None:
    """No backbone can be cut above its pooled output: stage 2 runs on raw images."""
    cut = Backbone.can_cut
    monkeypatch.setattr(Backbone, "can_cut", lambda self, n: n == 0 and cut(self, n))


@pytest.mark.parametrize("cached", [True, False])
def test_the_reversed_domain_gradient_reaches_the_unfrozen_block_only(data, cached, monkeypatch):
    """The domain loss's gradient reaches the unfrozen block's kernel through the reversal
    (-lambda times its direction without it) while the domain classifier's own gradient keeps its
    sign; frozen blocks are not trained (on cached activations they are not even in the model)."""
    import keras
    import tensorflow as tf

    if not cached:
        _uncut(monkeypatch)
    state = _context(data, _params(), Schedule(1, 1, 8, seed=0, domain_selection=LABEL_FREE))
    model, ((x_s, y_s), _, x_t), layers = backbone_dann(state)
    assert state.cached is cached and state.unfrozen == 1
    bb = state.backbone.model
    top, frozen = bb.get_layer("block2_conv").kernel, bb.get_layer("block1_conv").kernel
    trained = {id(v) for v in model.trainable_variables}
    assert id(top) in trained and id(frozen) not in trained
    assert {"block2_conv", "clf_dense", "clf_out"} <= {layer.name for layer in layers}
    assert not any(v.path.startswith("block1") for v in model.trainable_variables)
    if cached:  # the frozen bottom is no part of the model on boundary activations
        assert id(frozen) not in {id(v) for v in model.variables}
        assert x_s.shape[1:] == tuple(bb.get_layer("block1_drop").output.shape[1:])
    assert len(x_t) == 24  # the held-out quarter of the 32 target rows never trains

    x = tf.concat([x_s[:8], tf.cast(x_t[:8], x_s.dtype)], 0)
    d = tf.constant([[0.0]] * 8 + [[1.0]] * 8)
    lam = 0.7
    model.grl.set_lambda(lam)
    model.domain_logits(x)  # builds the domain classifier
    dom = model.domain_hidden.kernel

    def grads(reverse):
        with tf.GradientTape() as tape:
            logits = model.domain_logits(x, training=True, reverse=reverse)
            loss = tf.reduce_mean(keras.losses.binary_crossentropy(d, logits, from_logits=True))
        return tape.gradient(loss, [top, dom])

    (g_top, g_dom), (p_top, p_dom) = grads(True), grads(False)
    assert np.abs(p_top.numpy()).max() > 0
    np.testing.assert_allclose(g_top.numpy(), -lam * p_top.numpy(), rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(g_dom.numpy(), p_dom.numpy(), rtol=1e-6)

    # one training step moves the unfrozen block and leaves the frozen one as it was
    before_top, before_frozen = top.numpy().copy(), frozen.numpy().copy()
    model.train_step(((x_s[:8], x_t[:8]), y_s[:8]))
    assert not np.allclose(top.numpy(), before_top)
    np.testing.assert_array_equal(frozen.numpy(), before_frozen)


def test_cached_and_uncached_backbone_dann_agree(data, monkeypatch):
    """On cached boundary activations and on raw images through the whole backbone the same trial
    gives the same numbers: the frozen bottom (block1's dropout included) runs in inference mode
    in both, the batches and the domain classifier's draws are seeded the same."""
    p, s = _params(), Schedule(1, 2, 8, seed=0, domain_selection=LABEL_FREE)
    cached = run_trial(p, s, data, _source(data))
    _uncut(monkeypatch)
    raw = run_trial(p, s, data, _source(data))
    assert cached.cached and not raw.cached
    assert [h.stage for h in cached.history] == [1, 2, 2] == [h.stage for h in raw.history]
    for a, b in zip(cached.history, raw.history):
        for k in ("loss", "domain_loss", "label_loss", "val_loss", "lambda"):
            assert a.metrics[k] == pytest.approx(b.metrics[k], rel=1e-4, abs=1e-6), (a.step, k)
    assert cached.domain["bound_proxy"] == pytest.approx(raw.domain["bound_proxy"], abs=1e-6)
    for name in ("block2_conv", "clf_dense"):
        for u, v in zip(cached.weights[name], raw.weights[name]):
            np.testing.assert_allclose(u, v, rtol=1e-3, atol=1e-5)


def test_lambda_goes_on_over_both_stages_and_stage2_runs_only_where_it_adapts(data):
    """lambda's ramp spans both stages (stage 2 goes on where stage 1 left it); without target
    labels stage 2 runs only for trials that adapt through the backbone; each batch is handed on
    as in the other stages."""
    s = Schedule(2, 2, 8, seed=0, domain_selection=LABEL_FREE)
    batches = []
    r = run_trial(_params(), s, data, _source(data),
                  on_batch=lambda stage, done, steps, logs: batches.append((stage, done, steps)))
    # each batch is handed on (progress, the hard time limit), stage 2 included
    assert batches.count((2, 5, 5)) == 2 and batches.count((1, 5, 5)) == 2
    lam = [h.metrics["lambda"] for h in r.history]
    assert [h.stage for h in r.history] == [1, 1, 2, 2]
    assert all(0 < a < b for a, b in zip(lam, lam[1:])) and lam[1] < 0.49 < lam[-1] <= 0.5
    assert all(0.0 <= h.metrics["domain_accuracy"] <= 1.0 for h in r.history)
    assert r.best_stage == 2 and r.domain["adapted"] and r.value == r.domain[LABEL_FREE]
    assert planned_steps(_params(), s) == 4
    assert planned_steps(_params(domain_stage="head"), s) == 2  # a plain stage 2: not label-free
    assert planned_steps(_params(domain_lambda_max="off"), s) == 2
    assert planned_steps(_params(domain_stage="head"), Schedule(2, 2, 8)) == 4


def test_with_target_labels_a_kept_stage2_epoch_is_reported_through_its_blocks(data):
    """With labelled target data every trial runs stage 2; a kept epoch of a backbone DANN is
    reported through the adapted blocks, and the target's boundary activations are cached under
    the source's key with the target's fingerprint in place of the data's."""
    from dataclasses import replace

    from tlsearch.train.dann_stage import TARGET_LABELS

    labelled = replace(data)
    labelled.target_validation = True
    src = _source(labelled)
    s = Schedule(1, 2, 8, seed=0, domain_selection=TARGET_LABELS, keep_last=True)
    r = run_trial(_params(), s, labelled, src)
    assert [h.stage for h in r.history] == [1, 2, 2] and r.best_stage == 2
    assert r.domain["on"] == "target_validation" and r.domain["held_out_target"] == 8
    assert r.domain["val_loss"] == pytest.approx(r.history[-1].metrics["val_loss"], rel=1e-4)
    source_key = src._key("tiny_cnn", "below-top-1", _params())
    target_key = src._key("tiny_cnn", "below-top-1", _params(),
                          data="target:" + labelled.target_fingerprint)
    assert source_key != target_key and src.cache.contains(source_key)
    assert src.cache.contains(target_key)
    assert planned_steps(_params(domain_stage="head"), s) == 3  # labelled: a plain stage 2 runs
