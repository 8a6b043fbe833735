"""The LiteRT interpreter the export checks use: from its own package (`tlsearch[litert]`), with
TensorFlow's deprecated `tf.lite.Interpreter` only as the fallback where it is not installed."""

from __future__ import annotations

import sys
import tomllib

import numpy as np
import pytest

from conftest import REPO


def test_the_litert_extra_brings_the_interpreter_and_the_tests_install_it():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(r.startswith("ai-edge-litert") for r in extras["litert"])
    for name in ("all", "test"):
        assert any(r.startswith("tlsearch[") and "litert" in r for r in extras[name]), name


@pytest.fixture(scope="module")
def tflite(tmp_path_factory):
    import keras

    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, activation="softmax")])
    path = tmp_path_factory.mktemp("litert") / "m.tflite"
    model.export(str(path), format="litert", verbose=False)
    x = np.random.default_rng(0).random((4, 8, 8, 3)).astype(np.float32)
    return path, x, model.predict(x, verbose=0)


def test_the_interpreter_comes_from_ai_edge_litert(tflite):
    pytest.importorskip("ai_edge_litert", reason="the litert extra: pip install 'tlsearch[litert]'")
    from tlsearch.export.formats import litert_interpreter, run_litert

    path, x, want = tflite
    interpreter = litert_interpreter(path)
    assert type(interpreter).__module__.startswith("ai_edge_litert")
    assert np.abs(run_litert(interpreter, x) - want).max() < 1e-5


def test_without_the_package_tf_lite_still_checks_the_file(tflite, monkeypatch):
    from tlsearch.export.formats import litert_interpreter, run_litert

    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    path, x, want = tflite
    interpreter = litert_interpreter(path)
    assert type(interpreter).__module__.startswith("tensorflow")
    assert np.abs(run_litert(interpreter, x) - want).max() < 1e-5
