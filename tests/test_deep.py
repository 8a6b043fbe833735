"""Deep fine-tuning: boundaries past the memory budget spill to disk and are read memory-mapped,
with the numbers of in-memory ones."""

from __future__ import annotations

import numpy as np
import pytest

from tlsearch.config import BackboneEntry
from tlsearch.data import Dataset
from tlsearch.params import TrialParams
from tlsearch.train import cache as cache_mod
from tlsearch.train import features
from tlsearch.train.cache import FeatureCache
from tlsearch.train.features import BackboneSource
from tlsearch.train.pipeline import Schedule, run_trial


@pytest.fixture(scope="module")
def data() -> Dataset:
    rng = np.random.default_rng(2)
    x = rng.integers(0, 120, (44, 32, 32, 3)).astype(np.uint8)
    y = np.arange(44) % 3
    x[y == 1, :12] = 250
    x[y == 2, :, :12] = 250
    return Dataset("image", x[:33], y[:33], x[33:], y[33:], ["a", "b", "c"], fingerprint="deep")


def _source(data, root, prefetch=3):
    # batch 2: the forward pass runs in chunks of 32 rows, so the 33 training rows need two
    return BackboneSource({"tiny_cnn": BackboneEntry(name="tiny_cnn")}, data, 32,
                          FeatureCache(root, 1 << 30), prefetch_unfrozen=prefetch, batch_size=2)


def test_boundaries_past_the_memory_budget_spill_to_disk(data, tmp_path, monkeypatch):
    monkeypatch.setattr(features, "_PREFETCH_BYTES", 0)  # nothing extra fits in memory
    monkeypatch.setattr(features, "MMAP_BYTES", 0)  # the first boundary counts as large too
    monkeypatch.setattr(cache_mod, "MMAP_BYTES", 0)
    spilled = _source(data, tmp_path / "a")
    first = spilled.frozen_outputs("tiny_cnn", 2)
    assert spilled.cache.misses == 1 and isinstance(first[0], np.memmap)
    assert not list((tmp_path / "a" / "features").glob(".*"))  # no staging folder left behind
    monkeypatch.setattr(features, "_PREFETCH_BYTES", 1 << 30)
    monkeypatch.setattr(cache_mod, "MMAP_BYTES", 1 << 30)
    each = _source(data, tmp_path / "b", prefetch=0)
    for n in (0, 1, 2, 3):
        got = spilled.frozen_outputs("tiny_cnn", n)
        want = each.frozen_outputs("tiny_cnn", n)
        assert isinstance(got[0], np.memmap)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert spilled.cache.misses == 1  # one forward pass for all four
    # a stage-2 trial on memory-mapped boundaries trains as on arrays in memory
    p = TrialParams("tiny_cnn", unfreeze_blocks=3, lr_stage1=1e-2, lr_stage2=3e-3)
    mapped = run_trial(p, Schedule(1, 2, 8), data, spilled)
    plain = run_trial(p, Schedule(1, 2, 8), data, each)
    np.testing.assert_allclose([h.val_loss for h in mapped.history],
                               [h.val_loss for h in plain.history], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- text: length buckets


def _texts(n: int, seed: int = 0):
    from tlsearch.data import Dataset

    rng = np.random.default_rng(seed)
    words = ["good", "great", "fun", "bad", "awful", "dull", "the", "plot", "film", "acting"]
    y = np.arange(n) % 2
    # lengths from 1 to 14 words: most batches are far shorter than max_length
    x = np.array([" ".join(rng.choice(words[:3] if c else words[3:6], 1 + rng.integers(2)).tolist()
                           + rng.choice(words[6:], rng.integers(13)).tolist()) for c in y], object)
    return Dataset("text", x[:30], y[:30], x[30:], y[30:], ["neg", "pos"], fingerprint="len")


def _text_source(data, root=None):
    from tlsearch.modalities.text import TextBackboneSource

    return TextBackboneSource({"tiny_bert": BackboneEntry(name="tiny_bert")}, data, 32,
                              FeatureCache(root, 1 << 30), seed=0, batch_size=4)


def test_length_buckets_compute_what_full_padding_computes():
    import keras

    from tlsearch.modalities.text import sequence_lengths

    data = _texts(40)
    src = _text_source(data)
    p = TrialParams("tiny_bert", pooling="mean", max_length=32)
    bb = src.build("tiny_bert", p)
    tokens, _ = src.inputs(p)
    lengths = sequence_lengths(tokens)
    assert lengths.max() <= 17 and lengths.min() >= 3  # the full width, 32, is mostly padding
    model = keras.Model(bb.model.input, [bb.model.output, bb.boundary_output(1)])
    pooled, boundary = src.predict_rows(model, tokens)
    full_pooled, full_boundary = model.predict(tokens, verbose=0)
    np.testing.assert_allclose(pooled, full_pooled, atol=1e-5)
    real = np.arange(32)[None, :] < lengths[:, None]  # padding positions are never read
    np.testing.assert_allclose(boundary[real], full_boundary[real], atol=1e-5)


def test_training_on_length_buckets_matches_full_padding():
    import keras

    from tlsearch.modalities.text import epoch_setter, length_batches
    from tlsearch.train.heads import Head, assemble_model

    data = _texts(40, seed=1)
    src = _text_source(data)
    p = TrialParams("tiny_bert", pooling="cls", max_length=32)
    x_tr, x_va = src.inputs(p)
    y_tr = keras.utils.to_categorical(data.y_train, 2)
    y_va = keras.utils.to_categorical(data.y_val, 2)
    histories = []
    for trim in (True, False):
        keras.utils.set_random_seed(0)
        bb = src.build("tiny_bert", p)
        bb.freeze(2)
        for layer in bb.model._flatten_layers():  # masks drawn per shape: another seed, in effect
            if isinstance(layer, keras.layers.Dropout):
                layer.rate = 0.0
        model = assemble_model(bb, Head(8, 0.0, 2, 0))
        src.compiler(model, 3e-3)
        epoch = [0]
        h = model.fit(length_batches(x_tr, y_tr, None, 4, seed=0, epoch=epoch, trim=trim),
                      validation_data=length_batches(x_va, y_va, None, 4, trim=trim),
                      epochs=2, verbose=0, callbacks=[epoch_setter(epoch)])
        histories.append(h.history)
    cut, full = histories
    for key in ("loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(cut[key], full[key], rtol=1e-5, atol=1e-5, err_msg=key)
    assert cut["loss"][0] != cut["loss"][1]  # it trained


def test_text_trials_run_on_length_buckets_cached_and_not(tmp_path):
    data = _texts(40, seed=2)
    p = TrialParams("tiny_bert", unfreeze_blocks=1, pooling="mean", max_length=32,
                    lr_stage1=1e-2, lr_stage2=3e-3)
    cached = run_trial(p, Schedule(2, 2, 4), data, _text_source(data, tmp_path))
    src = _text_source(data)
    src.cache = None
    plain = run_trial(p, Schedule(2, 2, 4), data, src)
    assert cached.cached and not plain.cached
    # the same batches both ways: the first epoch agrees to rounding. The cache was computed in
    # batches of other lengths than training cuts, which moves the last digits, and Adam turns
    # such differences in near-zero gradients into whole steps: later epochs agree less closely.
    got, want = ([h.val_loss for h in r.history] for r in (cached, plain))
    assert len(got) == len(want) == 4
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(got, want, atol=0.03)


# ---------------------------------------------------------------------------- GPU path


def test_mixed_precision_and_xla_are_off_on_a_cpu_and_their_path_trains(data):
    import keras
    import tensorflow as tf

    from tlsearch.train.device import CPU, Acceleration, accelerated, detect
    from tlsearch.train.heads import Head, assemble_model

    src = BackboneSource({"tiny_cnn": BackboneEntry(name="tiny_cnn")}, data, 32, None)
    if not tf.config.list_physical_devices("GPU"):
        assert detect() == CPU and src.acceleration == CPU
        plain = assemble_model(src.build_uncached("tiny_cnn"), Head(8, 0.1, 3, 0))
        src.compiler(plain, 1e-3)
        assert not accelerated(plain) and not plain.jit_compile
        assert not isinstance(plain.optimizer, keras.optimizers.LossScaleOptimizer)
    # the GPU path, forced here: float16 inside the backbone, float32 variables and head output
    src.acceleration = Acceleration(mixed_precision=True, xla=True)
    bb = src.build_uncached("tiny_cnn")
    conv = bb.model.get_layer("block2_conv")
    assert conv.compute_dtype == "float16" and conv.kernel.dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"  # only that build was mixed
    model = assemble_model(bb, Head(8, 0.1, 3, 0))
    assert model.output.dtype == "float32"
    src.compiler(model, 1e-3)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) and model.jit_compile
    r = run_trial(TrialParams("tiny_cnn", unfreeze_blocks=2, lr_stage1=1e-2, lr_stage2=1e-3),
                  Schedule(1, 1, 8), data, src)
    assert not r.cached and len(r.history) == 2 and np.isfinite(r.value)
    assert all(w.dtype == np.float32 for ws in r.weights.values() for w in ws)
