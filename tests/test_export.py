"""Export and predict: every format written reproduces the in-study model; damage is refused."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_image_folder, write_study
from tlsearch.cli import main

TOL = 1e-4


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tiny study run once for the file, with two trials that reach stage 2."""
    root = tmp_path_factory.mktemp("export")
    make_image_folder(root / "images")
    path = write_study(root / "study.yaml", n_trials=2,
                       search={"unfreeze_blocks": {"low": 1, "high": 2}})
    assert main(["run", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def exported(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "model"
    assert main(["export", str(study), "--out", str(out)]) == 0
    return out


def _in_study_model(study_path, number=None):
    from tlsearch.search.artifacts import AtomicFileSystemArtifactStore
    from tlsearch.config import load_config
    from tlsearch.export.exporter import rebuild_model, select_trial
    from tlsearch.search.study import load_study

    cfg = load_config(study_path)
    st = load_study(cfg)
    frozen = select_trial(st, number)
    model, _ = rebuild_model(cfg, st, frozen, AtomicFileSystemArtifactStore(cfg.artifact_dir))
    return model, frozen


def _images(n=6, size=32, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.float32)


def test_export_writes_every_format_and_metadata(exported, study, capsys):
    meta = json.loads((exported / "metadata.json").read_text())
    _, best = _in_study_model(study)
    assert meta["trial"] == best.number and meta["study"] == "tiny"
    assert meta["classes"] == ["circle", "square", "stripes"]
    assert meta["best_step"] == best.user_attrs["tlsearch.best_step"]
    assert meta["best_stage"] in (1, 2)
    assert meta["input"]["shape"] == [None, 32, 32, 3]
    assert set(meta["metrics"]) >= {"val_loss", "val_accuracy"}
    assert meta["params"]["backbone"] == "tiny_cnn"
    assert {"keras", "tensorflow", "optuna", "python"} <= set(meta["versions"])
    for name in ("keras", "saved_model", "onnx", "litert"):
        assert meta["formats"][name]["status"] in ("ok", "skipped"), meta["formats"][name]
    assert meta["formats"]["litert"]["status"] == "ok", meta["formats"]["litert"]
    if importlib.util.find_spec("tf2onnx") and importlib.util.find_spec("onnxruntime"):
        assert meta["formats"]["onnx"]["status"] == "ok", meta["formats"]["onnx"]
    else:
        assert "tf2onnx" in meta["formats"]["onnx"].get("reason", "")
    assert meta["formats"]["keras"]["status"] == meta["formats"]["saved_model"]["status"] == "ok"
    assert "serve_image_bytes" in meta["formats"]["saved_model"]["signatures"]
    # a hash for every file written, and no file without one
    on_disk = {p.relative_to(exported).as_posix() for p in exported.rglob("*")
               if p.is_file() and p.name != "metadata.json"}
    assert set(meta["files"]) == on_disk
    from tlsearch._hashing import sha256_file

    for rel, info in meta["files"].items():
        assert sha256_file(exported / rel) == info["sha256"]
    text = json.dumps(meta)
    assert "sqlite" not in text and "storage" not in text


def test_exported_formats_match_the_in_study_model(exported, study):
    import keras
    import tensorflow as tf

    import tlsearch.layers  # noqa: F401

    model, _ = _in_study_model(study)
    x = _images()
    ref = model.predict(x, verbose=0)
    meta = json.loads((exported / "metadata.json").read_text())

    got = {"keras": keras.saving.load_model(exported / "model.keras").predict(x, verbose=0)}
    sm = tf.saved_model.load(str(exported / "serving" / "1"))
    got["serving_default"] = sm.signatures["serving_default"](image=tf.constant(x))[
        "probabilities"].numpy()
    got["uint8 pixels"] = sm.serve(tf.constant(x.astype(np.uint8).astype(np.float32)))[
        "probabilities"].numpy()
    import io

    encoded = []
    for img in x.astype(np.uint8):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        encoded.append(buf.getvalue())
    got["image bytes"] = sm.signatures["serve_image_bytes"](
        image_bytes=tf.constant(encoded))["probabilities"].numpy()
    if meta["formats"]["onnx"]["status"] == "ok":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(exported / "model.onnx"))
        got["onnx"] = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    if meta["formats"]["litert"]["status"] == "ok":
        from tlsearch.export.formats import litert_interpreter as _litert_interpreter, run_litert

        got["litert"] = run_litert(_litert_interpreter(exported / "model.tflite"), x)
    assert len(got) >= 4
    for name, pred in got.items():
        np.testing.assert_allclose(pred, ref, atol=TOL, err_msg=name)


def test_export_chosen_trial_and_announces_it(study, tmp_path, capsys):
    from tlsearch.config import load_config
    from tlsearch.search.study import load_study

    st = load_study(load_config(study))
    other = next(t.number for t in st.get_trials() if t.number != st.best_trial.number)
    out = tmp_path / "other"
    assert main(["export", str(study), "--out", str(out), "--trial", str(other),
                 "--formats", ""]) == 0
    err = capsys.readouterr().err
    assert f"trial #{other}" in err and "step" in err and "stage" in err
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["trial"] == other and set(meta["formats"]) == {"keras", "saved_model"}
    assert main(["export", str(study), "--out", str(tmp_path / "x"), "--trial", "99"]) == 2
    assert "trials 0..1" in capsys.readouterr().err


def test_refuses_to_overwrite_without_force(study, exported, capsys):
    assert main(["export", str(study), "--out", str(exported), "--formats", ""]) == 2
    assert "not empty" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncate", "alter"])
def test_damaged_artifact_is_refused_and_nothing_exported(study, tmp_path, capsys, damage):
    from tlsearch.config import load_config
    from tlsearch.search.study import load_study

    cfg = load_config(study)
    best = load_study(cfg).best_trial
    info = best.user_attrs["tlsearch.artifact"]
    stored = cfg.artifact_dir / info["id"]
    backup = tmp_path / "backup"
    shutil.copy(stored, backup)
    try:
        data = stored.read_bytes()
        if damage == "truncate":
            stored.write_bytes(data[: len(data) // 2])
        else:
            stored.write_bytes(data[:-10] + bytes(b ^ 0xFF for b in data[-10:]))
        out = tmp_path / "out"
        assert main(["export", str(study), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "damaged" in err and f"trial {best.number}" in err
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    finally:
        shutil.copy(backup, stored)


# ---- predict


def test_load_predict_api(exported, study):
    import tlsearch

    p = tlsearch.load(exported)
    model, _ = _in_study_model(study)
    x = _images(3)
    proba = p.predict_proba(x)
    np.testing.assert_allclose(proba, model.predict(x, verbose=0), atol=TOL)
    rows = p.predict(list(x.astype(np.uint8)))
    assert [r["label"] for r in rows] == [p.classes[i] for i in proba.argmax(1)]
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in rows)


def test_predict_cli_files_folders_and_bad_inputs(exported, tmp_path, capsys):
    folder = make_image_folder(tmp_path / "imgs", per_class=3, size=40)  # resized to 32 inside
    bad = tmp_path / "imgs" / "circle" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    one = next((folder / "square").glob("*.png"))

    assert main(["predict", str(exported), str(one), str(folder)]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "--skip-errors" in err

    out = tmp_path / "p.csv"
    assert main(["predict", str(exported), str(one), str(folder), str(tmp_path / "missing.jpg"),
                 "--skip-errors", "--batch-size", "4", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "broken.png" in err and "missing.jpg" in err and "2 of 12 inputs skipped" in err
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12 and rows[0]["input"] == str(one)
    assert sum(bool(r["error"]) for r in rows) == 2
    assert {r["label"] for r in rows if not r["error"]} <= {"circle", "square", "stripes"}

    assert main(["predict", str(exported), str(one)]) == 0
    line = capsys.readouterr().out.strip().split("\t")
    assert line[0] == str(one) and line[1] in ("circle", "square", "stripes")
    assert 0 < float(line[2]) <= 1

    js = tmp_path / "p.json"
    assert main(["predict", str(exported), str(one), "--out", str(js)]) == 0
    assert json.loads(js.read_text())[0]["input"] == str(one)


def test_predictor_refuses_an_altered_model(exported, tmp_path):
    import tlsearch
    from tlsearch.errors import UserError

    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    with open(copy / "model.keras", "ab") as f:
        f.write(b"x")
    with pytest.raises(UserError, match="SHA-256"):
        tlsearch.load(copy)
    with pytest.raises(UserError, match="no metadata.json"):
        tlsearch.load(tmp_path)


def test_predict_text_model_from_csv_and_lines(tmp_path):
    """Text exports take raw strings: a generic string-in Keras model stands in for a BERT one."""
    import keras
    import tensorflow as tf

    import tlsearch

    @keras.saving.register_keras_serializable(package="tlsearch_tests")
    class StringLength(keras.layers.Layer):
        def call(self, x):
            return tf.cast(tf.strings.length(x), "float32")[:, None] / 10.0

    inp = keras.Input(shape=(), dtype="string")
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(StringLength()(inp)))
    d = tmp_path / "text-export"
    d.mkdir()
    model.save(d / "model.keras")
    (d / "metadata.json").write_text(json.dumps({"classes": ["neg", "pos"], "modality": "text",
                                                 "input": {"kind": "text"}}))
    csv_path = tmp_path / "in.csv"
    csv_path.write_text('id,text\n1,"short"\n2,"a much, much longer text"\n')
    lines = tmp_path / "in.txt"
    lines.write_text("one line\n\nanother line\n")
    p = tlsearch.load(d)
    rows = p.predict([csv_path, lines, "a raw string"])
    assert [r["input"] for r in rows] == [f"{csv_path}:2", f"{csv_path}:3", f"{lines}:1",
                                          f"{lines}:3", "text[2]"]
    expected = model(tf.constant(["short", "a much, much longer text", "one line",
                                  "another line", "a raw string"])).numpy()
    np.testing.assert_allclose(p.predict_proba([csv_path, lines, "a raw string"]), expected,
                               atol=1e-6)
    bad = tmp_path / "two.csv"
    bad.write_text("a,b\n1,2\n")
    rows = p.predict([bad], skip_errors=True)
    assert "expected a `text` column" in rows[0]["error"]


def test_saved_model_stores_each_variable_once(exported, study):
    """Tracking the model besides its endpoints stored every variable twice."""
    import tensorflow as tf

    model, _ = _in_study_model(study)
    reader = tf.train.load_checkpoint(str(exported / "serving" / "1" / "variables" / "variables"))
    stored = [k for k in reader.get_variable_to_shape_map() if k != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    assert len(stored) == len(model.weights)  # (dropout seed states are not weights)
    shapes = reader.get_variable_to_shape_map()
    stored_values = sum(int(np.prod(shapes[k])) for k in stored)
    assert stored_values == sum(int(np.prod(w.shape)) for w in model.weights)
