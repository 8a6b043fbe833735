"""The two-stage pipeline: what trains when, one step count, exact caches, and the best epoch."""

from __future__ import annotations

import numpy as np
import pytest

from tlsearch.backbones import build_backbone
from tlsearch.train.cache import FeatureCache
from tlsearch.config import BackboneEntry
from tlsearch.data import Dataset
from tlsearch.errors import NonFiniteLoss
from tlsearch.params import TrialParams
from tlsearch.train.features import BackboneSource
from tlsearch.train.pipeline import Schedule, build_trained_model, run_trial


@pytest.fixture(scope="module")
def data() -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 120, (48, 32, 32, 3)).astype(np.uint8)
    y = np.arange(48) % 3
    x[y == 1, :12] = 250
    x[y == 2, :, :12] = 250
    return Dataset("image", x[:36], y[:36], x[36:], y[36:], ["a", "b", "c"], fingerprint="t")


def source(data, tmp_path=None, cache=True, prefetch=0):
    c = FeatureCache(tmp_path, 1 << 30) if cache else None
    return BackboneSource({"tiny_cnn": BackboneEntry(name="tiny_cnn")}, data, 32, c,
                          prefetch_unfrozen=prefetch)


def test_steps_run_across_both_stages(data, tmp_path):
    seen = []
    r = run_trial(TrialParams("tiny_cnn", unfreeze_blocks=2, lr_stage1=1e-2, lr_stage2=1e-3),
                  Schedule(3, 2, 8), data, source(data, tmp_path), on_epoch=seen.append)
    assert [s.step for s in seen] == [0, 1, 2, 3, 4]
    assert [s.stage for s in seen] == [1, 1, 1, 2, 2]
    assert r.history == seen
    best = min(seen, key=lambda s: s.val_loss)
    assert r.value == pytest.approx(best.val_loss) and r.best_step == best.step


def test_no_stage2_when_nothing_is_unfrozen(data, tmp_path):
    seen = []
    r = run_trial(TrialParams("tiny_cnn", unfreeze_blocks=0), Schedule(2, 3, 8), data,
                  source(data, tmp_path), on_epoch=seen.append)
    assert [s.stage for s in seen] == [1, 1] and r.unfrozen_blocks == 0
    assert set(r.weights) == {"clf_dense", "clf_out"}


@pytest.mark.parametrize("n", [1, 3])
def test_cached_training_equals_training_through_the_frozen_network(data, tmp_path, n):
    params = TrialParams("tiny_cnn", unfreeze_blocks=n, lr_stage1=1e-2, lr_stage2=1e-3)
    cached = run_trial(params, Schedule(2, 2, 8), data, source(data, tmp_path, cache=True))
    plain = run_trial(params, Schedule(2, 2, 8), data, source(data, cache=False))
    assert cached.cached and not plain.cached
    np.testing.assert_allclose([h.val_loss for h in cached.history],
                               [h.val_loss for h in plain.history], rtol=1e-4, atol=1e-5)
    for layer in plain.weights:
        for a, b in zip(cached.weights[layer], plain.weights[layer]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_boundaries_computed_in_one_pass_equal_one_pass_each(data, tmp_path):
    one_pass = source(data, tmp_path / "a", prefetch=3)
    f_tr, f_va = one_pass.frozen_outputs("tiny_cnn", 0)
    assert one_pass.cache.misses == 1
    each = source(data, tmp_path / "b")
    for n in (0, 1, 2, 3):
        got = one_pass.frozen_outputs("tiny_cnn", n)
        want = each.frozen_outputs("tiny_cnn", n)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert one_pass.cache.misses == 1 and each.cache.misses == 4


def test_a_pooled_head_reused_across_trials_trains_as_a_fresh_one(data, tmp_path):
    src = source(data, tmp_path)
    a = TrialParams("tiny_cnn", head_width=16, dropout=0.3, lr_stage1=1e-2)
    b = TrialParams("tiny_cnn", head_width=16, dropout=0.0, lr_stage1=3e-3)
    first = run_trial(a, Schedule(3, 0, 8), data, src)
    run_trial(b, Schedule(3, 0, 8), data, src)
    again = run_trial(a, Schedule(3, 0, 8), data, src)
    fresh = run_trial(a, Schedule(3, 0, 8), data, source(data, cache=False))
    assert len(src.heads) == 1
    for other in (again, fresh):
        np.testing.assert_allclose([h.val_loss for h in first.history],
                                   [h.val_loss for h in other.history], rtol=1e-4, atol=1e-5)
        for layer in first.weights:
            for x, y in zip(first.weights[layer], other.weights[layer]):
                np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_stage1_leaves_the_backbone_unchanged(data):
    """Un-cached stage 1 trains through the whole network: only the head may change. Checked on
    the backbone that really trained (BatchNorm statistics included), not a fresh build."""

    class Recording(BackboneSource):
        built: list = []

        def build(self, name, params=None):
            bb = super().build(name, params)
            self.built.append(bb)
            return bb

    src = Recording({"tiny_cnn": BackboneEntry(name="tiny_cnn")}, data, 32, None)
    before = {l.name: [w.copy() for w in l.get_weights()] for l in src.build("tiny_cnn").model.layers}
    r = run_trial(TrialParams("tiny_cnn", unfreeze_blocks=0, lr_stage1=5e-2), Schedule(3, 0, 8),
                  data, src)
    assert set(r.weights) == {"clf_dense", "clf_out"}
    trained = src.built[-1].model
    assert trained is not src.built[0].model
    for name, values in before.items():
        for a, b in zip(trained.get_layer(name).get_weights(), values):
            np.testing.assert_array_equal(a, b)
    # and the test can fail: a stage 2 trains the top block
    src.built.clear()
    run_trial(TrialParams("tiny_cnn", unfreeze_blocks=1, lr_stage1=5e-2, lr_stage2=5e-2),
              Schedule(1, 2, 8), data, src)
    top = src.built[-1].model.get_layer("block2_conv").get_weights()[0]
    assert not np.array_equal(top, before["block2_conv"][0])


def test_best_weights_rebuild_the_best_epoch(data, tmp_path):
    src = source(data, tmp_path)
    r = run_trial(TrialParams("tiny_cnn", unfreeze_blocks=2, lr_stage1=1e-2, lr_stage2=1e-3),
                  Schedule(2, 2, 8), data, src)
    model = build_trained_model(TrialParams("tiny_cnn", unfreeze_blocks=2), r.weights, 3, src)
    import keras

    probs = model.predict(data.x_val, verbose=0)
    loss = float(keras.losses.CategoricalCrossentropy()(
        keras.utils.to_categorical(data.y_val, 3), probs))
    assert loss == pytest.approx(r.value, rel=1e-4)


def test_non_finite_loss_fails_the_trial(data, tmp_path):
    x = data.x_train.astype(np.float32)
    x[0, 0, 0, 0] = np.nan  # one bad pixel poisons the loss
    bad = Dataset("image", x, data.y_train, data.x_val, data.y_val, data.class_names, fingerprint="nan")
    with pytest.raises(NonFiniteLoss, match="lower learning rate"):
        run_trial(TrialParams("tiny_cnn"), Schedule(3, 0, 8), bad, source(bad, tmp_path))


def test_augmentation_runs_uncached(data, tmp_path):
    r = run_trial(TrialParams("tiny_cnn", unfreeze_blocks=1, augmentation=0.5), Schedule(1, 1, 8),
                  data, source(data, tmp_path))
    assert not r.cached and len(r.history) == 2


def test_feature_cache_reused_across_trials_and_bounded(data, tmp_path):
    src = source(data, tmp_path)
    run_trial(TrialParams("tiny_cnn"), Schedule(1, 0, 8), data, src)
    run_trial(TrialParams("tiny_cnn", head_width=16), Schedule(1, 0, 8), data, src)
    assert src.cache.misses == 1 and src.cache.hits == 1
    fresh = source(data, tmp_path)  # a later run of the study: read from disk
    run_trial(TrialParams("tiny_cnn"), Schedule(1, 0, 8), data, fresh)
    assert fresh.cache.misses == 0
    warnings = []
    tiny = FeatureCache(tmp_path / "small", 100, warn=warnings.append)
    tiny.get_or_compute("k", lambda: (np.zeros(100), np.zeros(100)), "big")
    assert warnings and "cache limit" in warnings[0]


def test_a_third_stage_plugs_in_and_continues_the_step_count(data, tmp_path):
    """A stage is an object: a new one is a class added to the list, on the same global step."""
    from tlsearch.train.pipeline import default_stages
    from tlsearch.train.stages import Stage

    class HeadAgain(Stage):
        number, name = 3, "head again"

        def epochs(self, state):
            return 2

        def run(self, state):
            f_tr, f_va = state.source.frozen_outputs(state.params.backbone, 0, state.params)
            pooled = state.source.heads.get(f_tr.shape[-1], state.params.head_width,
                                            state.data.n_classes, 0, 0.0, 1e-3)
            state.fit(pooled.model, f_tr, f_va, stage=self.number, lr=None,
                      layers=pooled.layers, epochs=self.epochs(state))

    seen = []
    run_trial(TrialParams("tiny_cnn", unfreeze_blocks=1), Schedule(2, 2, 8), data,
              source(data, tmp_path), on_epoch=seen.append,
              stages=[*default_stages(), HeadAgain()])
    assert [s.step for s in seen] == [0, 1, 2, 3, 4, 5]
    assert [s.stage for s in seen] == [1, 1, 2, 2, 3, 3]

