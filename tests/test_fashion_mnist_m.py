"""The Fashion-MNIST-M builder: MNIST-M's blend, disjoint balanced splits, identical files per seed.

Runs on a fake Fashion-MNIST folder (a few hundred random images in the IDX format), so it needs
neither the Debian package nor a network; the photos are the ones bundled with scikit-image.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import make_fashion_mnist_m as fmm  # noqa: E402


def _write_idx(root: Path, prefix: str, n: int, rng) -> None:
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    x[:, 0, 0] = np.arange(n) % 256  # distinct-ish images, to trace where each one went
    x[:, 0, 1] = np.arange(n) // 256
    y = (np.arange(n) % 10).astype(np.uint8)
    with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\0" * 16 + x.tobytes())
    with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\0" * 8 + y.tobytes())


@pytest.fixture
def fake_fashion(tmp_path) -> Path:
    root = tmp_path / "fashion"
    root.mkdir()
    rng = np.random.default_rng(0)
    _write_idx(root, "train", 400, rng)
    _write_idx(root, "t10k", 200, rng)
    return root


SIZES = {"source_train": 100, "source_val": 40, "source_test": 60,
         "target_train": 100, "target_val": 40, "target_test": 60}


def test_blend_is_absolute_difference_with_a_photo_crop():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    photo = np.zeros((40, 50, 3), np.uint8) + np.array([10, 200, 255], np.uint8)
    out, which = fmm.blend(gray, [photo], rng)
    assert out.dtype == np.uint8 and out.shape == (5, 28, 28, 3)
    expected = np.abs(gray[..., None].astype(int) - np.array([10, 200, 255]))
    np.testing.assert_array_equal(out, expected)
    assert set(which) == {0}


def test_splits_are_disjoint_balanced_and_deterministic(tmp_path, fake_fashion):
    meta = fmm.build(tmp_path / "a", seed=3, sizes=SIZES, fashion_dir=fake_fashion)
    fmm.build(tmp_path / "b", seed=3, sizes=SIZES, fashion_dir=fake_fashion)
    fmm.build(tmp_path / "c", seed=4, sizes=SIZES, fashion_dir=fake_fashion)
    for split in fmm.SPLITS:
        a = (tmp_path / "a" / f"{split}.npz").read_bytes()
        assert a == (tmp_path / "b" / f"{split}.npz").read_bytes(), split
        assert a != (tmp_path / "c" / f"{split}.npz").read_bytes(), split

    data = {s: fmm.load_split(tmp_path / "a", s) for s in fmm.SPLITS}
    for split, (x, y) in data.items():
        assert x.shape == (SIZES[split], 28, 28, 3) and x.dtype == np.uint8
        assert np.bincount(y, minlength=10).tolist() == [SIZES[split] // 10] * 10
    # source images are grey in three equal channels; target images are not
    src = data["source_train"][0]
    assert (src[..., 0] == src[..., 1]).all() and (src[..., 1] == src[..., 2]).all()
    tgt = data["target_train"][0]
    assert (tgt[..., 0] != tgt[..., 1]).mean() > 0.5
    # no Fashion-MNIST image is used twice, and the recorded index is the image's own
    for split_of_fashion in ("train", "test"):
        used = []
        for split in fmm.SPLITS:
            with np.load(tmp_path / "a" / f"{split}.npz") as f:
                if str(f["fashion_split"]) == split_of_fashion:
                    used.append(f["fashion_index"])
        used = np.concatenate(used)
        assert len(used) == len(np.unique(used))
    with np.load(tmp_path / "a" / "source_val.npz") as f:
        x_fake, _ = fmm.read_fashion("train", fake_fashion)
        np.testing.assert_array_equal(f["x"][..., 0], x_fake[f["fashion_index"]])
    assert sum(meta["photo_counts"]["target_train"]) == SIZES["target_train"]
    assert len(meta["photo_counts"]["target_train"]) == len(fmm.PHOTOS)


def test_stratified_disjoint_never_reuses_an_index():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 30)
    parts = fmm.stratified_disjoint(y, [100, 100, 100], rng)
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == 300
    with pytest.raises(ValueError, match="not enough"):
        fmm.stratified_disjoint(y, [200, 200], rng)
