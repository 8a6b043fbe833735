"""Decoder (GPT-family) text backbones: last-token pooling, the tiny GPT-2 twin, its tokenizer, the
cut between decoder layers, raw-string models that save and reload, and a Hugging Face GPT-2 folder
converted and checked against a NumPy forward pass."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from tlsearch.config import BackboneEntry
from tlsearch.errors import UserError

TRICKY = ["good film", "a very dull movie !", "It's 12345 (not) fun\n\n  the END ", "café naïve",
          "x", "the plot, the acting and the film were great"]


def _source(data, names=("tiny_gpt2",), base_dir=None, **entries):
    from tlsearch.train.cache import FeatureCache
    from tlsearch.modalities.text import TextBackboneSource

    cfg = {n: entries.get(n, BackboneEntry(name=n)) for n in names}
    return TextBackboneSource(cfg, data, 32, FeatureCache(None, 1 << 30), seed=0, base_dir=base_dir)


def _data():
    from test_text import _tiny_data

    return _tiny_data()


def _params(backbone="tiny_gpt2", **kw):
    from tlsearch.params import TrialParams

    return TrialParams(backbone, **{"pooling": "last", "max_length": 16, **kw})


# ---------------------------------------------------------------------------- pooling


def test_last_pooling_gathers_the_last_real_token():
    from tlsearch.layers import POOLING_MODES, TextPooling

    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(4, 6, 5)).astype(np.float32)
    lengths = [6, 3, 1, 4]
    mask = (np.arange(6)[None, :] < np.array(lengths)[:, None]).astype(np.int32)  # right-padded
    out = np.asarray(TextPooling("last")(hidden, mask))
    np.testing.assert_array_equal(out, hidden[np.arange(4), np.array(lengths) - 1])
    left = mask[:, ::-1].copy()  # left padding: the last real token is the last position
    np.testing.assert_array_equal(np.asarray(TextPooling("last")(hidden, left)), hidden[:, -1])
    mean = np.asarray(TextPooling("mean")(hidden, mask))
    np.testing.assert_allclose(mean[1], hidden[1, :3].mean(0), rtol=1e-6)
    assert "last" in POOLING_MODES
    with pytest.raises(ValueError, match="'cls', 'mean', 'last'"):
        TextPooling("first")


def test_pooling_modes_per_backbone():
    from tlsearch.backbones.text import default_pooling, is_decoder, pooling_modes

    assert pooling_modes("tiny_gpt2") == pooling_modes("gpt2") == ("last", "mean")
    assert pooling_modes("tiny_bert") == ("cls", "mean")
    assert default_pooling("gpt2") == "last" and default_pooling("bert_base_uncased") == "cls"
    assert is_decoder("gpt2") and is_decoder("tiny_gpt2") and not is_decoder("minilm_l6")


# ---------------------------------------------------------------------------- the twin


def test_decoders_are_registered():
    from tlsearch.backbones import get, names, resolve_weights

    for n in ("gpt2", "gpt2_medium", "tiny_gpt2"):
        assert n in names() and get(n).modality == "text"
    assert get("gpt2").default_weights == "gpt2_base_en"
    assert resolve_weights(BackboneEntry(name="gpt2", weights="hf://openai-community/gpt2"))[0] \
        == "hf://openai-community/gpt2"


@pytest.mark.parametrize("n", [0, 1, 2])
def test_twin_blocks_are_its_decoder_layers(n):
    bb = _source(_data()).build("tiny_gpt2", _params())
    assert bb.blocks == [["transformer_layer_0"], ["transformer_layer_1"]]
    assert set(bb.model.input) == {"token_ids", "padding_mask"}
    bb.freeze(n)
    trainable = [layer.name for layer in bb.model.layers if layer.trainable and layer.weights]
    assert trainable == [f"transformer_layer_{i}" for i in range(2 - n, 2)]


def test_cls_pooling_is_refused_for_a_decoder():
    with pytest.raises(UserError, match="decoder.*use `pooling: last`"):
        _source(_data()).build("tiny_gpt2", _params(pooling="cls"))


def _reference_bpe(vocab, merges):
    """GPT-2's tokenization as Hugging Face's ``tokenizers`` does it (its tokenizer.json)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    ref = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges]))
    ref.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return ref


def _check_against_reference(pre, ref, eot, texts, length):
    tokens = pre(np.array(texts, dtype=object))
    for row, (ids, mask) in enumerate(zip(tokens["token_ids"], tokens["padding_mask"])):
        expected = [eot, *ref.encode(texts[row]).ids][:length]  # start token, no end token
        n = int(mask.sum())
        assert list(ids[:n]) == expected and not mask[n:].any()  # right-padded
    return tokens


def test_twin_tokenizer_equals_the_reference_bpe_and_the_graph_path():
    import tensorflow as tf

    from tlsearch.backbones.decoders import TINY_GPT2_WORDS, byte_level_bpe

    vocab, merges = byte_level_bpe(TINY_GPT2_WORDS)
    pre = _source(_data()).preprocessor("tiny_gpt2", 24)
    tokens = _check_against_reference(pre, _reference_bpe(vocab, merges), vocab["<|endoftext|>"],
                                      TRICKY, 24)
    assert tokens["token_ids"][0, 1:3].tolist() == [vocab["good"], vocab["Ġfilm"]]  # whole words
    graph = tf.function(lambda t: pre(t))(tf.constant(TRICKY))  # what `predict` runs
    for k in tokens:
        np.testing.assert_array_equal(np.asarray(graph[k]), tokens[k])


def test_words_are_split_as_gpt2_splits_them():
    """Merges that cross GPT-2's word boundaries (``'M``, ``(h``, ``\\n\\n``) must never apply:
    a tokenizer that split words another way would produce ids the checkpoint never saw."""
    import keras_hub

    from tlsearch.backbones.decoders import DecoderTextPreprocessor, byte_level_bpe

    vocab, merges = byte_level_bpe(["'M", "(hello", "don't", "a\n\nb", "two  spaces", "1234567",
                                    "hello", "!!"])
    pre = DecoderTextPreprocessor(keras_hub.tokenizers.GPT2Tokenizer(vocabulary=vocab,
                                                                     merges=merges), 32)
    texts = ["I'M HERE", "(hello)", "don't", "a\n\nb", "  two  spaces", "x 1234567",
             "wow!! (hello", "it'S 12"]
    _check_against_reference(pre, _reference_bpe(vocab, merges), vocab["<|endoftext|>"], texts, 32)


def test_right_padding_makes_features_independent_of_max_length():
    src = _source(_data())
    texts = np.array(["good film", "a very dull movie"], dtype=object)
    for pooling in ("last", "mean"):
        bb = src.build("tiny_gpt2", _params(pooling=pooling))
        short = bb.model.predict(src.tokenize("tiny_gpt2", texts, 8), verbose=0)
        long = bb.model.predict(src.tokenize("tiny_gpt2", texts, 32), verbose=0)
        np.testing.assert_allclose(short, long, atol=1e-5)
        assert np.abs(short[0] - short[1]).max() > 1e-3  # different texts, different vectors


@pytest.mark.parametrize("n", [1, 2])
def test_cut_between_decoder_layers_is_exact(n):
    src = _source(_data())
    bb = src.build("tiny_gpt2", _params())
    x, _ = src.inputs(_params())
    bottom, top = bb.split(n)
    assert bb.can_cut(n) and not bb.can_cut(0)
    np.testing.assert_allclose(top.predict(bottom.predict(x, verbose=0), verbose=0),
                               bb.model.predict(x, verbose=0), atol=1e-5)


def test_twin_trains_and_its_raw_string_model_reloads_in_a_fresh_process(tmp_path):
    import keras

    from tlsearch.params import TrialParams
    from tlsearch.train.pipeline import Schedule, build_trained_model, run_trial
    from tlsearch.modalities.text import build_raw_text_model

    data = _data()
    src = _source(data)
    sched = Schedule(stage1_epochs=1, stage2_epochs=1, batch_size=12)
    tr, va = src.inputs(_params())
    assert tr.keys() == {"token_ids", "padding_mask"} and va["token_ids"].shape == (12, 16)
    r = run_trial(_params(pooling="mean", unfreeze_blocks=1), sched, data, src)
    assert r.cached and r.unfrozen_blocks == 1 and len(r.history) == 2
    p = _params(unfreeze_blocks=1)
    r = run_trial(p, sched, data, src)
    assert src.tokenizations == 1  # two trials: tokenized once

    model = build_raw_text_model(p, r.weights, 2, src)
    texts = np.array(list(data.x_val[:4]), dtype=object)
    tokens = {k: v[:4] for k, v in va.items()}
    expected = build_trained_model(p, r.weights, 2, src).predict(tokens, verbose=0)
    np.testing.assert_allclose(model.predict(texts, verbose=0), expected, atol=1e-5)
    model.save(tmp_path / "m.keras")
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "m.keras").predict(texts, verbose=0),
                               expected, atol=1e-5)
    # a fresh process knows only tlsearch.layers, as a predictor does
    np.save(tmp_path / "texts.npy", texts.astype(str))
    code = ("import sys, numpy as np, keras, tlsearch.layers; "
            "m = keras.models.load_model(sys.argv[1]); "
            "np.save(sys.argv[2], m.predict(np.load(sys.argv[3]).astype(object), verbose=0))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.keras"), str(tmp_path / "p.npy"),
                    str(tmp_path / "texts.npy")], check=True, cwd=REPO, capture_output=True)
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), expected, atol=1e-5)


def test_tiny_gpt2_study_end_to_end_exports_a_raw_string_model(tmp_path):
    """A decoder study searches `last` and `mean` pooling, then exports a model that takes raw
    strings, as an encoder's study does (test_text.py::test_tiny_text_study_end_to_end)."""
    import optuna

    import tlsearch
    from conftest import write_study
    from test_text import _snippets
    from tlsearch.cli import main

    _snippets(48).to_csv(tmp_path / "reviews.csv", index=False)
    study = write_study(tmp_path / "study.yaml", name="tinygpt", n_trials=2,
                        data={"path": "reviews.csv", "image_size": 32},
                        backbones=["tiny_gpt2"],
                        training={"stage1_epochs": 2, "stage2_epochs": 1, "batch_size": 12},
                        search={"unfreeze_blocks": {"low": 0, "high": 2}, "head_width": [8],
                                "pooling": ["last", "mean"], "max_length": 16})
    assert main(["run", str(study)]) == 0
    s = optuna.load_study(study_name="tinygpt", storage=f"sqlite:///{tmp_path / 'tinygpt.db'}")
    assert [t.state.name for t in s.trials] == ["COMPLETE", "COMPLETE"]
    assert {t.user_attrs["tlsearch.params"]["pooling"] for t in s.trials} <= {"last", "mean"}

    out = tmp_path / "export"
    assert main(["export", str(study), "--out", str(out), "--formats", ""]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["params"]["backbone"] == "tiny_gpt2"
    predictor = tlsearch.load(out)
    texts = ["a great fun film", "dull and awful acting"]
    probs = predictor.predict_proba(texts)
    assert probs.shape == (2, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert [r["label"] for r in predictor.predict(texts)] == [
        predictor.classes[i] for i in probs.argmax(axis=1)]


# ---------------------------------------------------------------------------- a Hugging Face folder


def _hf_gpt2_folder(root: Path, vocab: dict, merges: list, layers=2, dim=32, heads=2) -> dict:
    """A GPT-2 checkpoint folder as Hugging Face writes it (random weights), and its tensors."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    v, t = len(vocab), 64

    def r(*shape, scale=0.2):
        return (rng.normal(size=shape) * scale).astype(np.float32)

    w = {"wte.weight": r(v, dim), "wpe.weight": r(t, dim), "ln_f.weight": 1 + r(dim),
         "ln_f.bias": r(dim)}
    for i in range(layers):
        p = f"h.{i}."
        w |= {p + "ln_1.weight": 1 + r(dim), p + "ln_1.bias": r(dim), p + "ln_2.weight": 1 + r(dim),
              p + "ln_2.bias": r(dim), p + "attn.c_attn.weight": r(dim, 3 * dim),
              p + "attn.c_attn.bias": r(3 * dim), p + "attn.c_proj.weight": r(dim, dim),
              p + "attn.c_proj.bias": r(dim), p + "mlp.c_fc.weight": r(dim, 4 * dim),
              p + "mlp.c_fc.bias": r(4 * dim), p + "mlp.c_proj.weight": r(4 * dim, dim),
              p + "mlp.c_proj.bias": r(dim)}
    root.mkdir()
    save_file(w, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": v,
        "n_layer": layers, "n_head": heads, "n_embd": dim, "n_positions": t, "n_ctx": t,
        "resid_pdrop": 0.1, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "bos_token_id": vocab["<|endoftext|>"], "eos_token_id": vocab["<|endoftext|>"]}))
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return w


def _numpy_gpt2(w: dict, ids: np.ndarray, lengths: np.ndarray, layers: int, heads: int) -> np.ndarray:
    """GPT-2's forward pass from the checkpoint's tensors; the last real token's final state."""
    w = {k: v.astype(np.float64) for k, v in w.items()}

    def ln(x, p):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * w[p + ".weight"] + w[p + ".bias"]

    def gelu_new(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    b, t = ids.shape
    h = w["wte.weight"][ids] + w["wpe.weight"][:t]
    d = h.shape[-1]
    causal = np.triu(np.full((t, t), -1e9), 1)
    for i in range(layers):
        p = f"h.{i}."
        qkv = ln(h, p + "ln_1") @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
        q, k, v = (x.reshape(b, t, heads, d // heads).transpose(0, 2, 1, 3)
                   for x in np.split(qkv, 3, axis=-1))
        a = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // heads) + causal
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        ctx = (a @ v).transpose(0, 2, 1, 3).reshape(b, t, d)
        h = h + ctx @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        f = gelu_new(ln(h, p + "ln_2") @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
        h = h + f @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    h = ln(h, "ln_f")
    return h[np.arange(b), lengths - 1]


def test_a_hugging_face_gpt2_folder_loads_and_matches_the_reference(tmp_path):
    from tlsearch.backbones import resolve_weights
    from tlsearch.backbones.decoders import TINY_GPT2_WORDS, byte_level_bpe

    vocab, merges = byte_level_bpe(TINY_GPT2_WORDS)
    w = _hf_gpt2_folder(tmp_path / "hf-folder", vocab, merges)
    entry = BackboneEntry(name="gpt2", weights="hf-folder")
    resolved, fingerprint = resolve_weights(entry, tmp_path)
    assert resolved == str(tmp_path / "hf-folder") and fingerprint.startswith("folder-sha256:")

    data = _data()
    src = _source(data, names=("gpt2",), base_dir=tmp_path, gpt2=entry)
    tokens = src.tokenize("gpt2", np.array(TRICKY, dtype=object), 24)  # the folder's vocab.json
    twin = _source(data).tokenize("tiny_gpt2", np.array(TRICKY, dtype=object), 24)
    np.testing.assert_array_equal(tokens["token_ids"], twin["token_ids"])

    bb = src.build("gpt2", _params("gpt2"))
    assert bb.blocks == [["transformer_layer_0"], ["transformer_layer_1"]]
    got = bb.model.predict(tokens, verbose=0)
    ref = _numpy_gpt2(w, tokens["token_ids"], tokens["padding_mask"].sum(1), layers=2, heads=2)
    np.testing.assert_allclose(got, ref, atol=2e-4)


@pytest.mark.slow  # two processes import keras-hub and trace the tokenizer: ~25 s on 2 cores
def test_a_raw_string_decoder_model_saved_with_either_module_path_loads_in_a_fresh_process(
        tmp_path):
    """The decoders' preprocessor moved from ``tlsearch.backbones.decoders`` beside
    ``tlsearch.layers``. Saved models name it by its registered Keras name, which did not change,
    and record the module it came from: one saved before the move (the old module path) loads as
    well as a new one, in a process that imports ``tlsearch.layers`` only."""
    import zipfile

    import keras

    from tlsearch.backbones.decoders import DecoderTextPreprocessor, tiny_gpt2_tokenizer
    from tlsearch.decoder_preprocessor import DecoderTextPreprocessor as Moved
    from tlsearch.layers import RawTextModel, TextPooling

    assert DecoderTextPreprocessor is Moved
    assert keras.saving.get_registered_name(Moved) == "tlsearch>DecoderTextPreprocessor"
    keras.utils.set_random_seed(0)
    ids = keras.Input((8,), dtype="int32", name="token_ids")
    mask = keras.Input((8,), dtype="bool", name="padding_mask")
    hidden = keras.layers.Embedding(512, 4)(ids)
    out = keras.layers.Dense(2, activation="softmax")(TextPooling("last")(hidden, mask))
    token_model = keras.Model({"token_ids": ids, "padding_mask": mask}, out)
    model = RawTextModel(DecoderTextPreprocessor(tiny_gpt2_tokenizer(), sequence_length=8),
                         token_model)
    texts = np.array(["a great fun film", "dull and awful acting"], dtype=object)
    expected = model.predict(texts, verbose=0)
    new, old = tmp_path / "new.keras", tmp_path / "old.keras"
    model.save(new)
    with zipfile.ZipFile(new) as z:
        files = {n: z.read(n) for n in z.namelist()}
    config = files["config.json"].decode()
    assert '"module": "tlsearch.decoder_preprocessor"' in config
    files["config.json"] = config.replace('"module": "tlsearch.decoder_preprocessor"',
                                          '"module": "tlsearch.backbones.decoders"').encode()
    with zipfile.ZipFile(old, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    np.save(tmp_path / "texts.npy", texts.astype(str))
    code = ("import sys, numpy as np, keras, tlsearch.layers\n"
            "for path in sys.argv[2:]:\n"
            "    m = keras.models.load_model(path)\n"
            "    print(path, m.predict(np.load(sys.argv[1]).astype(object), verbose=0).tolist())\n"
            "    assert 'tlsearch.backbones' not in sys.modules, 'loaded from above'\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "texts.npy"), str(new), str(old)],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        np.testing.assert_allclose(json.loads(line.split(" ", 1)[1]), expected, atol=1e-6)
