"""Frozen means frozen, in training too: every frozen layer runs in inference mode during ``fit``,
so training through the frozen network computes what the feature cache computed."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tlsearch.backbones import Backbone
from tlsearch.backbones.base import set_inference
from tlsearch.config import BackboneEntry
from tlsearch.data import Dataset
from tlsearch.params import TrialParams
from tlsearch.train.cache import FeatureCache
from tlsearch.train.features import BackboneSource
from tlsearch.train.pipeline import Schedule, run_trial


class Probe(keras.layers.Layer):
    """Records the training flag each call receives (the first, symbolic call records None)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen: list = []

    def call(self, x, training=None):
        self.seen.append(training)
        return x


def _backbone_with_probe():
    inp = keras.Input((6,), name="x")
    h = keras.layers.Dense(6, name="b0_dense")(inp)
    probe = Probe(name="b0_probe")
    h = probe(h)
    h = keras.layers.Dropout(0.5, name="b0_drop")(h)
    h = keras.layers.Dense(6, name="b1_dense")(h)
    top_probe = Probe(name="b1_probe")
    h = top_probe(h)
    model = keras.Model(inp, h)
    bb = Backbone("probe", model, [["b0_dense", "b0_probe", "b0_drop"], ["b1_dense", "b1_probe"]],
                  "test")
    return bb, probe, top_probe


def test_a_probe_in_the_frozen_part_sees_training_false_during_fit():
    bb, probe, top_probe = _backbone_with_probe()
    bb.freeze(1)
    x = keras.Input((6,))
    m = keras.Model(x, keras.layers.Dense(2)(bb.model(x)))
    m.compile("adam", "mse")
    m.fit(np.ones((8, 6), "float32"), np.zeros((8, 2), "float32"), epochs=1, batch_size=4,
          verbose=0)
    assert probe.seen[1:] and all(t is False for t in probe.seen[1:]), probe.seen
    assert True in top_probe.seen, "the unfrozen block must still train in training mode"


def test_frozen_dropout_is_off_even_when_called_in_training_mode():
    bb, _, _ = _backbone_with_probe()
    bb.freeze(0)
    x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    np.testing.assert_array_equal(np.asarray(bb.model(x, training=True)),
                                  np.asarray(bb.model(x, training=False)))
    bb.freeze(2)  # unfrozen again: its dropout is back
    assert not np.allclose(np.asarray(bb.model(x, training=True)),
                           np.asarray(bb.model(x, training=False)))


def test_set_inference_is_undone():
    layer = keras.layers.Dropout(0.5)
    set_inference(layer, True)
    assert "call" in layer.__dict__
    set_inference(layer, False)
    assert "call" not in layer.__dict__


@pytest.fixture(scope="module")
def data() -> Dataset:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 120, (40, 32, 32, 3)).astype(np.uint8)
    y = np.arange(40) % 2
    x[y == 1, :10] = 240
    return Dataset("image", x[:30], y[:30], x[30:], y[30:], ["a", "b"], fingerprint="frozen")


@pytest.mark.parametrize("n", [0, 1, 2])
def test_cache_is_exact_on_a_backbone_with_dropout(data, tmp_path, n):
    """tiny_cnn has a dropout in block 1: frozen below the top 1 block, trained above 2."""
    entries = {"tiny_cnn": BackboneEntry(name="tiny_cnn")}
    params = TrialParams("tiny_cnn", unfreeze_blocks=n, lr_stage1=1e-2, lr_stage2=1e-3, dropout=0.1)
    cached = run_trial(params, Schedule(2, 2, 8), data,
                       BackboneSource(entries, data, 32, FeatureCache(tmp_path, 1 << 30)))
    plain = run_trial(params, Schedule(2, 2, 8), data, BackboneSource(entries, data, 32, None))
    assert cached.cached and not plain.cached
    np.testing.assert_allclose([h.val_loss for h in cached.history],
                               [h.val_loss for h in plain.history], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([h.loss for h in cached.history],
                               [h.loss for h in plain.history], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n", [0, 1])
def test_text_cache_is_exact_on_tiny_bert_with_its_dropout(n):
    """keras-hub encoders carry dropout 0.1 (embeddings included): frozen, it must be off."""
    from test_text import _tiny_data, _tiny_source

    data = _tiny_data()
    params = TrialParams("tiny_bert", unfreeze_blocks=n, max_length=16, lr_stage1=1e-2,
                         lr_stage2=1e-3)
    sched = Schedule(stage1_epochs=2, stage2_epochs=1, batch_size=12)
    cached = run_trial(params, sched, data, _tiny_source(data))
    plain_src = _tiny_source(data)
    plain_src.cache = None
    plain = run_trial(params, sched, data, plain_src)
    assert cached.cached and not plain.cached
    np.testing.assert_allclose([h.val_loss for h in cached.history],
                               [h.val_loss for h in plain.history], rtol=1e-4, atol=1e-5)
