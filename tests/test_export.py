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
    from tlsearch.runner.prepare import load_study

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
    # a hash for every file written, and no file without one (metadata.json is sealed itself;
    # the model card is documentation, not checked)
    on_disk = {p.relative_to(exported).as_posix() for p in exported.rglob("*")
               if p.is_file() and p.name not in ("metadata.json", "MODEL_CARD.md")}
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
    from tlsearch.runner.prepare import load_study

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
    from tlsearch.runner.prepare import load_study

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
    from tlsearch._hashing import sha256_file

    files = {"model.keras": {"sha256": sha256_file(d / "model.keras")}}
    (d / "metadata.json").write_text(json.dumps({"classes": ["neg", "pos"], "modality": "text",
                                                 "input": {"kind": "text"}, "files": files}))
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


def _png(img: np.ndarray, mode: str = "RGB") -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("shape, mode", [((20, 20), "RGB"), ((480, 640), "RGB"), ((50, 70), "L")])
def test_one_resize_everywhere_any_size_and_mode(exported, tmp_path, shape, mode):
    """Training, predict, the SavedModel's endpoints, Keras, ONNX and LiteRT (fed the same resize)
    agree within 1e-5 on pictures that are not at the study's size."""
    import keras
    import tensorflow as tf

    import tlsearch
    from tlsearch.data.images import resize_pixels

    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (*shape, 3)).astype(np.uint8)
    data = _png(base, mode)
    f = tmp_path / "picture.png"
    f.write_bytes(data)
    with Image.open(f) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.uint8)
    resized = np.asarray(resize_pixels(pixels[None], 32))
    got = {"predict": tlsearch.load(exported).predict_proba([f])}
    sm = tf.saved_model.load(str(exported / "serving" / "1"))
    got["image bytes"] = sm.serve_image_bytes(tf.constant([data]))["probabilities"].numpy()
    got["any-size array"] = sm.serve(tf.constant(pixels[None].astype(np.float32)))[
        "probabilities"].numpy()
    got["keras"] = keras.saving.load_model(exported / "model.keras").predict(resized, verbose=0)
    meta = json.loads((exported / "metadata.json").read_text())
    if meta["formats"]["onnx"]["status"] == "ok":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(exported / "model.onnx"))
        got["onnx"] = sess.run(None, {sess.get_inputs()[0].name: resized})[0]
    if meta["formats"]["litert"]["status"] == "ok":
        from tlsearch.export.formats import litert_interpreter, run_litert

        got["litert"] = run_litert(litert_interpreter(exported / "model.tflite"), resized)
    ref = got["keras"]
    for name, p in got.items():
        np.testing.assert_allclose(p, ref, atol=1e-5, err_msg=name)


def test_image_export_loads_and_predicts_in_a_fresh_process(exported, tmp_path):
    import subprocess
    import sys

    img = tmp_path / "x.png"
    img.write_bytes(_png(np.full((40, 30, 3), 200)))
    r = subprocess.run([sys.executable, "-m", "tlsearch.cli", "predict", str(exported), str(img)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert str(img) in r.stdout
    code = ("import tlsearch, keras, sys; "
            "m = keras.saving.load_model(sys.argv[1]); print(m.output.shape[-1])")
    r = subprocess.run([sys.executable, "-c", code, str(exported / "model.keras")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip().endswith("3"), r.stderr[-3000:]


def test_every_file_is_verified_and_a_missing_file_list_refused(exported, tmp_path):
    import tlsearch
    from tlsearch.errors import UserError

    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    (copy / "serving" / "1" / "saved_model.pb").write_bytes(b"tampered")
    with pytest.raises(UserError, match="saved_model.pb"):
        tlsearch.load(copy)
    copy2 = tmp_path / "copy2"
    shutil.copytree(exported, copy2)
    meta = json.loads((copy2 / "metadata.json").read_text())
    del meta["files"]
    (copy2 / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="no list of its files"):
        tlsearch.load(copy2)


def test_predict_streams_jsonl_csv_and_json(exported, tmp_path, capsys):
    folder = make_image_folder(tmp_path / "imgs", per_class=2, size=32)
    (folder / "circle" / "broken.png").write_bytes(b"\x89PNG not really")
    capsys.readouterr()
    assert main(["predict", str(exported), str(folder), "--format", "jsonl", "--skip-errors",
                 "--batch-size", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [json.loads(line) for line in lines]  # every line is one JSON object
    assert len(rows) == 7 and sum("error" in r for r in rows) == 1
    good = [r for r in rows if "error" not in r]
    assert all(r["label"] in ("circle", "square", "stripes") for r in good)
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in good)

    assert main(["predict", str(exported), str(folder / "square"), "--format", "json"]) == 0
    assert [r["input"] for r in json.loads(capsys.readouterr().out)] == sorted(
        str(p) for p in (folder / "square").glob("*.png"))
    assert main(["predict", str(exported), str(folder / "square"), "--format", "csv"]) == 0
    table = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert len(table) == 2 and table[0]["label"] and table[0]["p_circle"]

    out = tmp_path / "p.jsonl"
    assert main(["predict", str(exported), str(folder / "square"), "--out", str(out)]) == 0
    assert len([json.loads(x) for x in out.read_text().splitlines()]) == 2
    assert main(["predict", str(exported), str(folder), "--out", str(tmp_path / "p.xml")]) == 2


def test_export_and_cache_info_print_json(study, tmp_path, capsys, monkeypatch):
    out = tmp_path / "plain"
    capsys.readouterr()
    assert main(["export", str(study), "--out", str(out), "--formats", "", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["out"] == str(out) and got["study"] == "tiny"
    assert got["formats"]["keras"]["status"] == "ok" and "onnx" not in got["formats"]
    assert got["classes"] == ["circle", "square", "stripes"]
    cache = tmp_path / "cache"
    (cache / "features" / "some-key").mkdir(parents=True)
    (cache / "features" / "some-key" / "train.npy").write_bytes(b"\0" * 1000)
    monkeypatch.setenv("TLSEARCH_CACHE_DIR", str(cache))
    assert main(["cache", "info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"dir": str(cache), "entries": 1, "bytes": 1000}


def test_export_without_tf2onnx_records_onnx_as_skipped(study, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if the `onnx` extra were not installed
    out = tmp_path / "no-onnx"
    assert main(["export", str(study), "--out", str(out), "--formats", "onnx"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["formats"]["onnx"]["status"] == "skipped"
    assert "tlsearch[onnx]" in meta["formats"]["onnx"]["reason"]
    assert not (out / "model.onnx").exists() and (out / "model.keras").is_file()


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


def test_one_batch_run_eagerly_matches_the_traced_batches(exported):
    """A call whose inputs fit one batch runs the model eagerly (no graph to trace for one
    batch); the probabilities are those of the traced path."""
    import tlsearch

    p = tlsearch.load(exported)
    x = _images(6)
    np.testing.assert_allclose(p.predict_proba(x, batch_size=64), p.predict_proba(x, batch_size=2),
                               atol=1e-5)


def test_predict_starts_without_scikit_learn_and_leaves_it_importable():
    """`tlsearch predict` hides scikit-learn while Keras starts (Keras imports it for wrappers
    tlsearch never uses: 1.4 s of a one-image predict); a later `import sklearn` still works."""
    import subprocess
    import sys

    code = ("import sys; from tlsearch._quiet import import_tensorflow_quietly as q; "
            "q(lean=True); print('sklearn' in sys.modules); import sklearn; print(sklearn.__name__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["False", "sklearn"]
