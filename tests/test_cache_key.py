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


# --- the key: every field of the declaration changes it ---------------------------------------

def _source(folder: Path, entry: dict | None = None, size: int = 16, fingerprint: str = "d1",
            cache=None):
    import numpy as np

    from tlsearch.config import BackboneEntry
    from tlsearch.data import Dataset
    from tlsearch.train.features import BackboneSource

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (12, size, size, 3)).astype(np.uint8)
    y = np.arange(12) % 3
    data = Dataset("image", x[:9], y[:9], x[9:], y[9:], ["a", "b", "c"], fingerprint=fingerprint)
    e = BackboneEntry(**{"name": "mine", "path": folder / "mine.keras", **(entry or {})})
    return BackboneSource({e.name: e}, data, size, cache)


def _other_weights(folder: Path) -> Path:
    import keras

    path = folder / "other.keras"
    if not path.exists():
        keras.models.clone_model(keras.saving.load_model(folder / "mine.keras")).save(path)
    return path


#: field -> (what changes it, as (source, boundary) -> (source, boundary))
FLIPS = {
    "backbone": lambda f, s, b, mp: (_source(f, {"name": "theirs"}), b),
    "weights": lambda f, s, b, mp: (_source(f, {"path": _other_weights(f)}), b),
    "preprocessing": lambda f, s, b, mp: (_source(f, {"preprocessing": "unit"}), b),
    "block_ends": lambda f, s, b, mp: (_source(f, {"block_ends": "^c[12]$"}), b),
    # None and "none" scale alike, but the builder is handed another option
    "build_options": lambda f, s, b, mp: (_source(f, {"preprocessing": "none"}), b),
    "trial_options": lambda f, s, b, mp: (
        mp.setattr(s, "key_options", lambda params, boundary: {"max_length": 32}) or s, b),
    "image_size": lambda f, s, b, mp: (_source(f, size=24), b),
    "resize": lambda f, s, b, mp: (mp.setattr("tlsearch.backbones.frozen.RESIZE", "nearest")
                                   or s, b),
    "data": lambda f, s, b, mp: (_source(f, fingerprint="d2"), b),
    "output": lambda f, s, b, mp: (s, "below-top-1"),
    "versions": lambda f, s, b, mp: (mp.setattr("tlsearch.backbones.frozen._versions",
                                                lambda: {"keras": "0.0"}) or s, b),
}


def test_every_field_of_the_declaration_has_a_flip_and_a_place_in_the_meaning_or_a_reason():
    from dataclasses import fields

    from tlsearch.backbones.frozen import FrozenPart

    assert set(FLIPS) == {f.name for f in fields(FrozenPart)}
    for f in fields(FrozenPart):
        assert f.metadata["fingerprint"] or f.metadata["why"], f.name


@pytest.mark.parametrize("field", sorted(FLIPS))
def test_flipping_one_field_changes_the_key(folder, field, monkeypatch):
    from dataclasses import asdict

    source = _source(folder)
    before = source._key("mine", "pooled", None)
    part = source.frozen_part("mine", "pooled", None)
    flipped, boundary = FLIPS[field](folder, source, "pooled", monkeypatch)
    name = next(iter(flipped.entries))
    after = flipped.frozen_part(name, boundary, None)
    changed = {k for k, v in asdict(after).items() if asdict(part)[k] != v}
    # a .keras entry's preprocessing is also the option its builder is handed
    assert changed == {field} | ({"build_options"} if field == "preprocessing" else set())
    assert flipped._key(name, boundary, None) != before
    if field in ("preprocessing", "block_ends", "build_options", "weights", "image_size"):
        assert after.fingerprint("mine") != part.fingerprint("mine")  # resume refuses it too


# --- the read guard: what a key forgets, a recomputation of a few stored rows catches ----------

def _forgetting(monkeypatch, *forgotten):
    """Make the key leave out ``forgotten`` fields, as the key this guards against did."""
    from tlsearch.backbones.frozen import FrozenPart

    parts = FrozenPart.key_parts
    monkeypatch.setattr(FrozenPart, "key_parts",
                        lambda self: {k: v for k, v in parts(self).items() if k not in forgotten})


@pytest.mark.parametrize("entry, n, forgotten", [
    ({"preprocessing": "unit"}, 0, ("preprocessing", "build_options")),
    ({"block_ends": "^c[12]$"}, 1, ("block_ends",)),
])
def test_the_read_guard_catches_what_the_key_forgot(folder, tmp_path, monkeypatch, entry, n,
                                                    forgotten):
    import numpy as np

    from tlsearch.train.cache import FeatureCache

    _forgetting(monkeypatch, *forgotten)
    first = _source(folder, cache=FeatureCache(tmp_path, 1 << 30))
    theirs = first.frozen_outputs("mine", n)
    warnings: list[str] = []
    # another study, as a fresh process sees the folder: nothing in memory
    cache = FeatureCache(tmp_path, 1 << 30, warn=warnings.append)
    second = _source(folder, entry, cache=cache)
    assert second._key("mine", f"below-top-{n}" if n else "pooled", None) == \
        first._key("mine", f"below-top-{n}" if n else "pooled", None)  # the key cannot tell
    got = second.frozen_outputs("mine", n)
    fresh = _source(folder, entry, cache=FeatureCache(tmp_path / "fresh", 1 << 30))
    want = fresh.frozen_outputs("mine", n)
    assert not np.allclose(theirs[0], want[0], rtol=1e-3)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
    assert (cache.checks, cache.rejected) == (1, 1)
    assert len(warnings) == 1 and "not what the frozen backbone computes now" in warnings[0]
    assert "Discarding them" in warnings[0]
    # the entry is now the second study's, and it passes the guard when read again
    again = FeatureCache(tmp_path, 1 << 30, warn=warnings.append)
    np.testing.assert_allclose(_source(folder, entry, cache=again).frozen_outputs("mine", n)[0],
                               want[0], rtol=1e-5, atol=1e-6)
    assert (again.checks, again.rejected, again.hits, len(warnings)) == (1, 0, 1, 1)


def test_the_read_guard_checks_target_features_too(folder, tmp_path, monkeypatch):
    import numpy as np

    from tlsearch.train.cache import FeatureCache

    _forgetting(monkeypatch, "preprocessing", "build_options")
    rng = np.random.default_rng(5)
    target = rng.integers(0, 255, (5, 16, 16, 3)).astype(np.uint8)
    sources = []
    for entry in ({}, {"preprocessing": "unit"}):
        s = _source(folder, entry, cache=FeatureCache(tmp_path, 1 << 30, warn=lambda m: None))
        s.dataset.x_target, s.dataset.target_fingerprint = target, "t1"
        sources.append(s)
    theirs = sources[0].target_outputs("mine")
    got = sources[1].target_outputs("mine")
    assert sources[1].cache.rejected == 1
    assert not np.allclose(theirs, got, rtol=1e-3)


# --- a study's stored meaning: the same declaration, and studies stored before still resume ----

def _stored_before(meaning: dict, path_entries: dict) -> dict:
    """A meaning as the previous format stored it: per backbone only its weights, and for a
    ``.keras`` entry its preprocessing and block_ends as the study file wrote them."""
    old = {k: v for k, v in meaning.items()
           if k not in ("meaning.version", "data.resize") and not (
               k.startswith("backbones.") and not k.endswith(".weights"))}
    for name, entry in path_entries.items():
        old[f"backbones.{name}.preprocessing"] = entry.get("preprocessing")
        old[f"backbones.{name}.block_ends"] = entry.get("block_ends")
    return old


@pytest.mark.parametrize("backbone", ["keras file", "tiny_cnn"])
def test_a_study_stored_with_the_previous_meaning_still_resumes(folder, tmp_path, capsys,
                                                                backbone):
    entry = {"name": "mine", "path": str(folder / "mine.keras")}
    settings = dict(
        name="old", data={"path": str(folder / "images"), "validation_split": 0.25,
                          "image_size": 16},
        backbones=[entry] if backbone == "keras file" else ["tiny_cnn"],
        training={"stage1_epochs": 1, "stage2_epochs": 0, "batch_size": 8},
        search={"unfreeze_blocks": 0, "head_width": 8})
    study_file = write_study(tmp_path / "old.yaml", n_trials=1, **settings)
    assert main(["run", str(study_file)]) == 0
    storage = f"sqlite:///{tmp_path / 'old.db'}"
    study = optuna.load_study(study_name="old", storage=storage)
    from tlsearch.search.attrs import ATTR

    now = study.user_attrs[ATTR["fingerprint"]]
    assert now["meaning.version"] == 2
    assert {f"backbones.{'mine' if backbone == 'keras file' else 'tiny_cnn'}.{f}"
            for f in ("weights", "preprocessing", "block_ends", "build_options")} <= set(now)
    study.set_user_attr(ATTR["fingerprint"], _stored_before(
        now, {"mine": {}} if backbone == "keras file" else {}))
    write_study(study_file, n_trials=2, **settings)
    assert main(["run", str(study_file)]) == 0
    assert len(optuna.load_study(study_name="old", storage=storage).trials) == 2
    if backbone == "keras file":  # what the old format recorded is still held against it
        write_study(study_file, n_trials=3, **{**settings, "backbones": [
            {**entry, "preprocessing": "unit"}]})
        capsys.readouterr()
        assert main(["run", str(study_file)]) == 2
        assert 'backbones.mine.preprocessing: was "none", now "unit"' in capsys.readouterr().err
        assert len(optuna.load_study(study_name="old", storage=storage).trials) == 2
