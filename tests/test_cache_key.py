"""The feature cache never serves features computed for something else.

Two studies on the same ``.keras`` file that differ only in what the entry says about it (its
preprocessing, its cut points) share one cache folder: the second must train on its own features,
so its trial value is the one a fresh cache gives, not the first study's.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from conftest import make_image_folder, write_study
from tlsearch.cli import main


def _keras_file(path: Path) -> Path:
    """Three same-shaped convolutions: every cut point hands on a tensor of the same shape, so
    features served for the wrong cut would not even fail on shape."""
    import keras

    keras.utils.set_random_seed(3)
    keras.Sequential([
        keras.Input((16, 16, 3)),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1"),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c2"),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c3"),
    ]).save(path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("shared")
    make_image_folder(d / "images", per_class=8, size=16)
    _keras_file(d / "mine.keras")
    return d


def _value(folder: Path, name: str, cache: Path, entry: dict, unfreeze: int) -> float:
    study = write_study(
        folder / f"{name}.yaml", name=name, n_trials=1,
        data={"path": "images", "validation_split": 0.25, "image_size": 16},
        backbones=[{"name": "mine", "path": "mine.keras", **entry}],
        training={"stage1_epochs": 2, "stage2_epochs": 2 if unfreeze else 0, "batch_size": 8},
        search={"unfreeze_blocks": unfreeze, "head_width": 8, "dropout": 0.0,
                "lr_stage1": 1e-2, "lr_stage2": 1e-3},
        cache={"dir": str(cache)})
    assert main(["run", str(study)]) == 0
    got = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / name}.db").best_value
    assert got is not None
    return float(got)


@pytest.mark.parametrize("field, first, second, unfreeze", [
    ("preprocessing", {"preprocessing": "none"}, {"preprocessing": "unit"}, 0),
    ("block_ends", {}, {"block_ends": "^c[12]$"}, 1),
])
def test_an_entry_that_computes_otherwise_gets_its_own_features(folder, tmp_path, field, first,
                                                                second, unfreeze):
    shared = tmp_path / "shared-cache"
    a = _value(folder, f"{field}-a", shared, first, unfreeze)
    b = _value(folder, f"{field}-b", shared, second, unfreeze)
    fresh = _value(folder, f"{field}-fresh", tmp_path / "fresh-cache", second, unfreeze)
    assert math.isclose(b, fresh, rel_tol=1e-5, abs_tol=1e-6), (a, b, fresh)
    assert not math.isclose(a, fresh, rel_tol=1e-3), (a, fresh)
