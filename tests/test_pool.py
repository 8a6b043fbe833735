"""Stage-2 models reused across trials train number for number like freshly built ones."""

from __future__ import annotations

import numpy as np
import pytest

from tlsearch.config import BackboneEntry
from tlsearch.data import Dataset
from tlsearch.params import TrialParams
from tlsearch.train.cache import FeatureCache
from tlsearch.train.features import BackboneSource
from tlsearch.train.pipeline import Schedule, run_trial


@pytest.fixture(scope="module")
def data() -> Dataset:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 120, (40, 32, 32, 3)).astype(np.uint8)
    y = np.arange(40) % 3
    x[y == 1, :12] = 250
    x[y == 2, :, :12] = 250
    return Dataset("image", x[:30], y[:30], x[30:], y[30:], ["a", "b", "c"], fingerprint="pool")


def _source(data, root):
    return BackboneSource({"tiny_cnn": BackboneEntry(name="tiny_cnn")}, data, 32,
                          FeatureCache(root, 1 << 30), prefetch_unfrozen=3)


def _same(a, b):
    np.testing.assert_allclose([h.val_loss for h in a.history], [h.val_loss for h in b.history],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([h.loss for h in a.history], [h.loss for h in b.history],
                               rtol=1e-5, atol=1e-6)
    assert set(a.weights) == set(b.weights)
    for layer in a.weights:
        for x, y in zip(a.weights[layer], b.weights[layer]):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_pooled_stage2_trains_like_a_fresh_build(data, tmp_path):
    # BatchNorm trains (its statistics must be reset too) and the top holds a dropout layer
    schedule = Schedule(2, 2, 8, keep_bn_frozen=False)
    a = TrialParams("tiny_cnn", unfreeze_blocks=3, head_width=8, dropout=0.3, lr_stage1=1e-2,
                    lr_stage2=3e-3)
    b = TrialParams("tiny_cnn", unfreeze_blocks=3, head_width=8, dropout=0.0, lr_stage1=3e-3,
                    lr_stage2=1e-2)
    c = TrialParams("tiny_cnn", unfreeze_blocks=1, head_width=16, lr_stage2=1e-2)
    pool = _source(data, tmp_path)
    pooled = [run_trial(t, schedule, data, pool) for t in (a, b, c, a, b)]
    compiled = pool.compiler.since_clear
    assert len(pool.tops) == 2  # depth 3 width 8, depth 1 width 16
    again = [run_trial(t, schedule, data, pool) for t in (b, a)]
    assert pool.compiler.since_clear == compiled  # nothing built or compiled again
    fresh = [run_trial(t, schedule, data, _source(data, tmp_path)) for t in (a, b)]
    assert all(r.cached and r.best_stage in (1, 2) for r in pooled)
    assert any(r.best_stage == 2 for r in pooled)  # stage 2 mattered to the comparison
    for got, want in ((pooled[0], fresh[0]), (pooled[1], fresh[1]), (pooled[3], fresh[0]),
                      (pooled[4], fresh[1]), (again[0], fresh[1]), (again[1], fresh[0])):
        _same(got, want)
    # training moved the unfrozen blocks, and each trial started from the pretrained ones
    assert "block2_conv" in pooled[0].weights
    assert not np.allclose(pooled[0].weights["block2_conv"][0], pooled[1].weights["block2_conv"][0])
