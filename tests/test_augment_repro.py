"""Augmentation is the same on every run: every draw is keyed by (study seed, trial, epoch, batch),
so the parallel input pipeline's threads may finish in any order; other epochs and trials differ."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

from conftest import REPO, make_image_folder, write_study
from tlsearch.params import TrialParams

AUGMENT = {"flip": "horizontal", "rotation": 0.1, "zoom": 0.2, "contrast": 0.2}


def _images(n: int = 96, size: int = 16):
    x = np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)).astype("float32")
    return x, np.eye(n, dtype="float32")  # each example its own label: where it went is seen


def _epochs(augmenter, start: int, epochs: int, batch_size: int = 4):
    """The (images, labels) of each epoch that :class:`EpochBatches` feeds to training."""
    from tlsearch.train.augment import EpochBatches

    feed = EpochBatches(augmenter, _images(), batch_size)
    batches = [tuple(np.asarray(t) for t in b) for b in feed.dataset(start, epochs)]
    assert len(batches) == epochs * feed.steps
    return [tuple(np.concatenate(part) for part in zip(*batches[i:i + feed.steps]))
            for i in range(0, len(batches), feed.steps)]


def test_same_seed_same_transforms_whatever_order_the_parallel_map_runs_in():
    """Two fresh pipelines, the same seed: the same pixels, batch by batch (the layers' own seed
    generators, shared by the parallel map's calls, gave each run its own)."""
    import tensorflow as tf

    from tlsearch.train.augment import dataset_augmenter

    x, y = _images()

    def once():
        augment = dataset_augmenter(TrialParams("x", **AUGMENT), seed=0)
        return np.concatenate([b[0] for b in augment(tf.data.Dataset.from_tensor_slices((x, y))
                                                     .batch(4))])

    first, second = once(), once()
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, x)


def test_each_epoch_and_each_trial_draws_its_own_order_and_transforms():
    from tlsearch.train.augment import Augmenter, settings

    a = settings(TrialParams("x", **AUGMENT))
    (x0, y0), (x1, y1) = _epochs(Augmenter(a, seed=0, trial=0), start=0, epochs=2)
    for y in (y0, y1):  # every example once an epoch, in the epoch's own order
        np.testing.assert_array_equal(y.sum(axis=0), 1.0)
    assert not np.array_equal(y0, y1)
    same_order = np.argsort(y1.argmax(1))  # epoch 1's images in epoch 0's order
    assert not np.allclose(x0[np.argsort(y0.argmax(1))], x1[same_order], atol=1.0)
    # keyed by the trial's global step, not by which fit call trains it (a stage, a phase)
    (x1_again, y1_again), = _epochs(Augmenter(a, seed=0, trial=0), start=1, epochs=1)
    np.testing.assert_array_equal(x1_again, x1)
    np.testing.assert_array_equal(y1_again, y1)
    (x0_other, y0_other), = _epochs(Augmenter(a, seed=0, trial=1), start=0, epochs=1)
    assert not np.array_equal(y0_other, y0) and not np.allclose(x0_other, x0, atol=1.0)
    (x0_seed, _), = _epochs(Augmenter(a, seed=1, trial=0), start=0, epochs=1)
    assert not np.allclose(x0_seed, x0, atol=1.0)


def test_each_image_draws_its_own_transform_as_before():
    """Keyed seeds keep the layers' draws: a flip for about half the images, each image its own."""
    from tlsearch.train.augment import Augmenter, settings

    x, y = _images()
    flips = Augmenter(settings(TrialParams("x", flip="horizontal")), seed=0)
    (xa, ya), = _epochs(flips, start=0, epochs=1, batch_size=16)
    xa = xa[np.argsort(ya.argmax(1))]
    flipped = np.array([np.array_equal(a, b[:, ::-1]) for a, b in zip(xa, x)])
    kept = np.array([np.array_equal(a, b) for a, b in zip(xa, x)])
    assert (flipped | kept).all() and 0.3 < flipped.mean() < 0.7
    assert all(0 < flipped[i:i + 16].sum() < 16 for i in range(0, len(x), 16))


def _run(tmp_path: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    """``tlsearch run`` in a fresh process, into a fresh SQLite database."""
    study = write_study(
        tmp_path / f"{name}.yaml", name=name, n_trials=2,
        data={"path": "images", "validation_split": 0.25, "image_size": 32},
        training={"stage1_epochs": 2, "stage2_epochs": 1, "batch_size": 4},
        search={"unfreeze_blocks": 1, "head_width": 8, "lr_stage1": {"low": 1e-3, "high": 1e-2},
                "lr_stage2": 1e-3, **AUGMENT})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    url = f"sqlite:///{tmp_path / name}.db"
    r = subprocess.run([sys.executable, "-m", "tlsearch.cli", "run", str(study), "--storage", url,
                        "--quiet"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return optuna.load_study(study_name=name, storage=url).get_trials()


@pytest.mark.slow
def test_same_seed_same_numbers_through_tlsearch_run(tmp_path):
    """The issue's case: flip, rotation, zoom and contrast, two runs with seed 0, two fresh
    processes and databases: every trial's value and intermediate value equal to the last digit.
    The export carries none of the augmentation."""
    import keras

    from tlsearch.cli import main

    make_image_folder(tmp_path / "images", per_class=16, size=32)  # 36 training images: 9 batches
    first, second = _run(tmp_path, "first"), _run(tmp_path, "second")
    assert [t.params for t in first] == [t.params for t in second]
    assert [t.value for t in first] == [t.value for t in second]
    assert [t.intermediate_values for t in first] == [t.intermediate_values for t in second]
    assert all(len(t.intermediate_values) == 3 for t in first)
    out = tmp_path / "export"
    assert main(["export", str(tmp_path / "first.yaml"), "--storage",
                 f"sqlite:///{tmp_path / 'first'}.db", "--out", str(out), "--formats", ""]) == 0
    model, = (keras.saving.load_model(p, compile=False) for p in out.glob("*.keras"))
    names = [type(layer).__name__ for layer in model._flatten_layers()]
    assert "Dense" in names and not [n for n in names if n.startswith("Random")]
