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


def test_the_sample_slice_builds_without_debian_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setattr(fmm, "FASHION_DIR", tmp_path / "no-debian-fashion-mnist")
    meta = fmm.build(tmp_path / "slice", seed=0, from_sample=True)
    assert meta["sizes"] == fmm.SLICE_SIZES and "sample" in meta["fashion"]
    data = {s: fmm.load_split(tmp_path / "slice", s) for s in fmm.SPLITS}
    for split, (x, y) in data.items():
        assert x.shape == (fmm.SLICE_SIZES[split], 28, 28, 3) and x.dtype == np.uint8
        assert np.bincount(y, minlength=10).tolist() == [fmm.SLICE_SIZES[split] // 10] * 10
    # the labels are the sample's folders: a source image is the sample file of its class
    x_sample, y_sample = fmm.read_sample("train")
    with np.load(tmp_path / "slice" / "source_train.npz") as f:
        np.testing.assert_array_equal(f["x"][..., 0], x_sample[f["fashion_index"]])
        np.testing.assert_array_equal(f["y"], y_sample[f["fashion_index"]])


def _shipped_study_on_the_slice(tmp_path: Path, **overrides) -> Path:
    """studies/fashion-mnist-m-dann.yaml, unchanged but for ``overrides``, next to a slice built
    from the committed sample where its relative data paths point."""
    import yaml

    study = fmm.REPO / "studies" / "fashion-mnist-m-dann.yaml"
    cfg = yaml.safe_load(study.read_text())
    data_dir = tmp_path / Path(cfg["data"]["path"]).parent
    fmm.build(data_dir, seed=0, from_sample=True)
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if name:
            cfg[section][name] = value
        else:
            cfg[section] = value
    out = tmp_path / study.name
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def test_the_fashion_mnist_m_study_validates(tmp_path, monkeypatch, capsys):
    """The shipped study checks out on a fresh clone: its data built from the committed sample."""
    from tlsearch.cli import main

    monkeypatch.setattr(fmm, "FASHION_DIR", tmp_path / "no-debian-fashion-mnist")
    study = _shipped_study_on_the_slice(tmp_path)
    assert main(["validate", str(study)]) == 0
    assert "domain_lambda_max" in capsys.readouterr().out


@pytest.mark.timeout(300)
def test_one_tiny_trial_of_the_fashion_mnist_m_study_runs(tmp_path, monkeypatch):
    """The same study file, run for one trial on tiny_cnn at 32 px (the real backbone is the
    benchmark's business): the slice is data a study can train on and judge label-free."""
    import optuna

    from tlsearch.cli import main

    monkeypatch.setattr(fmm, "FASHION_DIR", tmp_path / "no-debian-fashion-mnist")
    study = _shipped_study_on_the_slice(
        tmp_path, n_trials=1, backbones=["tiny_cnn"], **{"data.image_size": 32,
                                                        "training.stage1_epochs": 2})
    assert main(["run", str(study)]) == 0
    s = optuna.load_study(study_name="fashion-mnist-m-dann",
                          storage=f"sqlite:///{tmp_path / 'fashion-mnist-m-dann.db'}")
    assert [t.state.name for t in s.trials] == ["COMPLETE"]
    assert np.isfinite(s.trials[0].value)
