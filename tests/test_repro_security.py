"""Reproducibility (one worker, fixed seed, same results) and what must never leak or run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest

from conftest import make_image_folder, write_study
from tlsearch.cli import main


def _tiny(tmp_path: Path, name: str, **overrides) -> Path:
    if not (tmp_path / "images").exists():
        make_image_folder(tmp_path / "images", per_class=6, size=8)
    settings = dict(name=name, n_trials=3,
                    data={"path": "images", "validation_split": 0.34, "image_size": 8},
                    training={"stage1_epochs": 1, "stage2_epochs": 1, "batch_size": 16})
    return write_study(tmp_path / f"{name}.yaml", **{**settings, **overrides})


def test_one_worker_fixed_seed_runs_twice_the_same(tmp_path, capsys):
    """Two studies from one file (two databases), trained on CPU: the same parameters and values."""
    results = []
    for name in ("first", "second"):
        assert main(["run", str(_tiny(tmp_path, name, sampler={"type": "tpe", "seed": 7,
                                                                "n_startup_trials": 2}))]) == 0
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / name}.db")
        results.append([(t.params, t.value) for t in study.get_trials()])
    (a, b) = results
    assert [p for p, _ in a] == [p for p, _ in b]
    for (_, va), (_, vb) in zip(a, b):
        assert math.isclose(va, vb, rel_tol=1e-5, abs_tol=1e-6)


def test_storage_password_never_printed(tmp_path, capsys, monkeypatch):
    url = "postgresql+psycopg://user:secret@127.0.0.1:1/db"
    study = _tiny(tmp_path, "tiny")
    assert main(["run", str(study), "--storage", url]) == 2
    monkeypatch.setenv("TLSEARCH_STORAGE", url)
    assert main(["run", str(study), "--workers", "2"]) == 2
    study2 = _tiny(tmp_path, "inline", storage=url)
    monkeypatch.delenv("TLSEARCH_STORAGE")
    assert main(["run", str(study2)]) == 2
    assert main(["validate", str(study2)]) == 0
    assert main(["validate", str(study2), "--json"]) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert "user:***@127.0.0.1:1/db" in text
    assert "secret" not in text


def test_password_from_the_environment_stays_out_of_the_stored_study(tmp_path, capsys,
                                                                       monkeypatch):
    """`storage: ...${PGPASSWORD}...` in the study file: neither the stored study nor the output
    carries the password (here as a `password=` query parameter, which libpq also accepts)."""
    monkeypatch.setenv("TLSEARCH_TEST_SECRET", "secret")
    db = tmp_path / "s.db"
    study = _tiny(tmp_path, "tiny", n_trials=1, storage=f"sqlite:///{db}?password=${{TLSEARCH_TEST_SECRET}}")
    assert main(["run", str(study)]) == 0
    stored = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}?password=secret")
    assert "secret" not in json.dumps(stored.user_attrs)
    assert "secret" not in json.dumps([t.user_attrs for t in stored.get_trials()])
    out = capsys.readouterr()
    assert "?password=***" in out.out.replace("\n", "")
    assert "secret" not in out.out + out.err


def test_keras_file_with_a_lambda_layer_is_refused(tmp_path, capsys):
    """Safe mode: a .keras file carrying Python code is refused before the study exists."""
    import keras

    inp = keras.Input((8, 8, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0, name="code")(inp)
    x = keras.layers.Conv2D(4, 3, name="block0_conv")(x)
    keras.Model(inp, x).save(tmp_path / "mine.keras")
    study = _tiny(tmp_path, "tiny", backbones=[{"name": "mine", "path": "mine.keras",
                                               "preprocessing": "unit"}])
    assert main(["run", str(study)]) == 2
    err = capsys.readouterr().err
    assert "could not load the Keras file" in err and "safely" in err and "Lambda" in err
    assert not (tmp_path / "tiny.db").exists()
