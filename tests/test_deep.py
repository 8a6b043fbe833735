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
