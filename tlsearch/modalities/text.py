"""Text: tokenized once per study, cached like images, and exported as a model on raw strings.

:class:`TextBackboneSource` tokenizes the study's texts once per (backbone tokenizer,
``max_length``) and serves the token arrays to every trial, and the frozen outputs through the same
feature cache as images:

* stage 1 trains the head on the pooled encoder output, cached per pooling and ``max_length``;
* stage 2 trains the top N encoder layers on the hidden states below them, cached per
  ``max_length`` (pooling comes after the cut). An encoder layer needs the padding mask as well as
  the hidden states, so the cached boundary carries the mask as one extra channel: the pipeline's
  single-tensor cut works unchanged (see :class:`tlsearch.backbones.text.TextBackbone`).

Texts are tokenized to ``max_length``, but short texts are mostly padding: tweets of 20 tokens
padded to 128 cost six times the work they need. So every pass over texts, training or computing
the cache, runs in batches of similar length, each cut to its longest text
(:func:`length_batches`). Attention never looks at padding and pooling skips it, so the numbers
are those of full padding up to rounding (tested to 1e-5); what changes is which texts share a
batch while training (rows are shuffled each epoch, sorted by length within windows of 64
batches, and the batches shuffled), and the dropout masks of unfrozen layers, drawn at the
batch's shape.

:func:`raw_text_model` wraps a trained token model with its tokenizer, so an exported model takes
raw strings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlsearch.backbones import spec_for
from tlsearch.errors import InputError
from tlsearch.modalities.registry import InputItem, Modality, failing, register
from tlsearch.params import TrialParams
from tlsearch.train.features import BackboneSource
from tlsearch.train.pipeline import build_trained_model

__all__ = ["TextModality", "TextBackboneSource", "raw_text_model", "build_raw_text_model",
           "sequence_lengths", "length_batches", "epoch_setter"]

#: batches sorted by length together while training: larger windows pad less, smaller ones mix more
WINDOW = 64


def sequence_lengths(x) -> np.ndarray:
    """Real tokens per row of token arrays (their padding mask), or of boundary activations (the
    mask is their last channel)."""
    if isinstance(x, dict):
        return np.count_nonzero(np.asarray(x["padding_mask"]), axis=1)
    return np.count_nonzero(np.asarray(x[..., -1]) > 0.5, axis=1)


def _cut(x, rows: np.ndarray, length: int):
    """Rows of token arrays or activations, cut to ``length`` tokens (pooled features: no cut)."""
    if isinstance(x, dict):
        return {k: np.asarray(v[rows])[:, :length] for k, v in x.items()}
    return np.asarray(x[rows])[:, :length] if np.ndim(x) == 3 else np.asarray(x[rows])


def length_batches(x, y: np.ndarray, sample_weight: np.ndarray | None, batch_size: int, *,
                   seed: int | None = None, epoch: list | None = None, trim: bool = True,
                   lengths: np.ndarray | None = None):
    """A ``tf.data`` pipeline of ``(inputs, labels[, weights])`` batches of texts of similar length,
    each cut to its longest text (``trim=False`` keeps the full width: the same batches, for
    comparison). ``x`` is token arrays, boundary activations, or pooled features (then
    ``lengths``, the texts' token counts, is needed; the rows are batched the same way, uncut).

    ``seed`` None: one pass in length order (validation). Otherwise each epoch has its own order,
    seeded by ``(seed, epoch[0])`` (:func:`epoch_setter` keeps ``epoch[0]`` at Keras' epoch
    number, so the order does not depend on how often Keras reads the pipeline): rows shuffled,
    sorted by length within windows of :data:`WINDOW` batches, and the batches shuffled.
    """
    import tensorflow as tf

    lengths = sequence_lengths(x) if lengths is None else lengths
    n, full = len(lengths), (x["token_ids"] if isinstance(x, dict) else x).shape[1]
    epoch = [0] if epoch is None else epoch

    def batches() -> list[np.ndarray]:
        if seed is None:
            idx = np.argsort(lengths, kind="stable")
            return [idx[i:i + batch_size] for i in range(0, n, batch_size)]
        rng = np.random.default_rng([seed, int(epoch[0])])
        idx = rng.permutation(n)
        span = batch_size * WINDOW
        idx = np.concatenate([w[np.argsort(lengths[w], kind="stable")]
                              for w in (idx[i:i + span] for i in range(0, n, span))])
        out = [idx[i:i + batch_size] for i in range(0, n, batch_size)]
        return [out[i] for i in rng.permutation(len(out))]

    def rows():
        for b in batches():
            cut = _cut(x, b, max(1, int(lengths[b].max())) if trim else full)
            yield (cut, y[b]) if sample_weight is None else (cut, y[b], sample_weight[b])

    def spec(a, cut: bool):
        return tf.TensorSpec((None, None if cut else a.shape[1], *a.shape[2:]),
                             tf.as_dtype(a.dtype))

    x_spec = ({k: spec(v, True) for k, v in x.items()} if isinstance(x, dict)
              else spec(x, np.ndim(x) == 3))
    sig: tuple = (x_spec, tf.TensorSpec((None, *y.shape[1:]), tf.as_dtype(y.dtype)))
    if sample_weight is not None:
        sig += (tf.TensorSpec((None,), tf.as_dtype(sample_weight.dtype)),)
    return tf.data.Dataset.from_generator(rows, output_signature=sig).prefetch(2)


def epoch_setter(holder: list):
    """A Keras callback that keeps ``holder[0]`` at the number of the epoch about to run."""
    import keras

    class _SetEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            holder[0] = epoch

    return _SetEpoch()


class TextBackboneSource(BackboneSource):
    """Builds text backbones and serves token arrays and frozen outputs, each computed once."""

    unit = "texts"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._tokens: dict[tuple, tuple[dict, ...]] = {}
        self._preprocessors: dict[tuple, object] = {}
        self.tokenizations = 0  # how many times texts were tokenized (the tests count them)

    def options(self, params: TrialParams | None) -> dict:
        if params is None:
            return {}
        return {"pooling": params.pooling, "max_length": int(params.max_length)}

    def key_options(self, params: TrialParams | None, boundary: str) -> dict:
        opts = self.options(params)
        if boundary != "pooled":
            opts.pop("pooling", None)  # the cut is below the pooling
        return opts

    def preprocessor(self, name: str, max_length: int):
        """The keras-hub layer from raw strings to this backbone's token inputs (one per study)."""
        weights, fingerprint = self.weights(name)
        key = (name, fingerprint, int(max_length))
        if key not in self._preprocessors:
            make = spec_for(self.entries[name]).preprocessor
            assert make is not None, f"{name} is no text backbone"
            self._preprocessors[key] = make(weights, int(max_length))
        return self._preprocessors[key]

    def tokenize(self, name: str, texts: np.ndarray, max_length: int) -> dict[str, np.ndarray]:
        """Token arrays for ``texts``, computed fresh (no caching): ids, segments, padding mask."""
        pre = self.preprocessor(name, max_length)
        out: dict[str, list] = {}
        for i in range(0, len(texts), 1024):
            batch = pre(np.asarray(texts[i:i + 1024], dtype=object).astype(str))
            for k, v in batch.items():
                out.setdefault(k, []).append(np.asarray(v).astype(np.int32))
        return {k: np.concatenate(v) for k, v in out.items()}

    def batches(self, params, x_train, x_val, y_train, y_val, sample_weight, batch_size: int,
                seed: int):
        """Training batches: Keras' shuffled batches of full-width arrays (None), as images.

        Batches of similar length (:func:`length_batches`) cut the cost of padding, but trained
        through the whole network they did not reproduce the cached trial number for number on
        ``tiny_bert`` (tests/test_frozen.py), so training keeps full padding until they do; the
        forward passes that fill the cache use length batches (:meth:`predict_rows`), which are
        exact."""
        return None

    def length_batched(self, params, x_train, x_val, y_train, y_val, sample_weight,
                       batch_size: int, seed: int):
        """Batches of similar length, each cut to its longest text (:func:`length_batches`):
        token arrays, boundary activations and pooled features alike."""
        lengths = [sequence_lengths(t) for t in self.inputs(params)]
        epoch = [0]
        return (length_batches(x_train, y_train, sample_weight, batch_size, seed=seed,
                               epoch=epoch, lengths=lengths[0]),
                length_batches(x_val, y_val, None, batch_size, lengths=lengths[1]),
                [epoch_setter(epoch)])

    def predict_rows(self, model, x) -> list[np.ndarray]:
        """The model's outputs on token arrays, run in batches of similar length, each cut to its
        longest text; sequence outputs padded back with zeros (nothing reads padding)."""
        lengths = sequence_lengths(x)
        order = np.argsort(lengths, kind="stable")
        full = x["token_ids"].shape[1]
        outs: list[np.ndarray] = []
        for i in range(0, len(order), self.batch_size):
            b = order[i:i + self.batch_size]
            got = model.predict_on_batch(_cut(x, b, max(1, int(lengths[b].max()))))
            got = [np.asarray(g) for g in (got if isinstance(got, (list, tuple)) else [got])]
            if not outs:
                outs = [np.zeros((len(order), *((full, *g.shape[2:]) if g.ndim == 3
                                                else g.shape[1:])), np.float32) for g in got]
            for out, g in zip(outs, got):
                out[b, :g.shape[1]] = g
        return outs

    def recompute(self, model, x) -> np.ndarray:
        """Rows for the read guard, batched by length as the fill batches them."""
        return self.predict_rows(model, x)[0]

    def comparable(self, x, out: np.ndarray) -> np.ndarray:
        """Boundary activations at the real tokens only: a batch's padding positions hold
        whatever its longest text made of them."""
        if out.ndim != 3:
            return out
        real = np.arange(out.shape[1])[None, :] < sequence_lengths(x)[:, None]
        return np.where(real[..., None], out, 0)

    def target_inputs(self, params: TrialParams | None):
        """The unlabelled target texts, tokenized (their features are cached, so once a study)."""
        if params is None:
            raise ValueError("text inputs depend on the trial's max_length")
        assert self.dataset.x_target is not None, "the study has no `data.target`"
        return self.tokenize(params.backbone, self.dataset.x_target, params.max_length)

    def inputs(self, params: TrialParams | None):
        """The tokenized train and validation texts, tokenized once per (tokenizer, max_length)."""
        if params is None:
            raise ValueError("text inputs depend on the trial's max_length")
        _, fingerprint = self.weights(params.backbone)
        key = (params.backbone, fingerprint, int(params.max_length))
        if key not in self._tokens:
            self.tokenizations += 1
            self._tokens[key] = tuple(self.tokenize(params.backbone, x, params.max_length)
                                      for x in (self.dataset.x_train, self.dataset.x_val))
        return self._tokens[key]


def raw_text_model(token_model, preprocessor, name: str = "tlsearch_text_model"):
    """A Keras model that takes a batch of raw strings: the tokenizer runs inside the model.

    ``token_model`` is a trained model on token inputs (what the pipeline trains), ``preprocessor``
    the keras-hub layer that made its inputs (:meth:`TextBackboneSource.preprocessor`). The result
    saves to ``.keras`` with the tokenizer's vocabulary and reloads with ``keras.models.load_model``
    once ``tlsearch`` is imported (with keras-hub for the tokenizer).
    """
    from tlsearch.layers import RawTextModel

    return RawTextModel(preprocessor, token_model, name=name)


def build_raw_text_model(params: TrialParams, weights: dict, n_classes: int,
                         source: TextBackboneSource, seed: int = 0):
    """A trial's best model, taking raw strings: what ``export`` should save for a text study."""
    model = build_trained_model(params, weights, n_classes, source, seed=seed)
    return raw_text_model(model, source.preprocessor(params.backbone, params.max_length))



class TextModality(Modality):
    """Raw strings in; the tokenizer is inside the model (:func:`build_raw_text_model`)."""

    name = "text"
    # the tokenizer inside the model runs TensorFlow Text ops (RegexSplitWithOffsets,
    # FastWordpieceTokenizeWithOffsets, ...) that neither converter has
    unavailable_formats = {f: ("not available for text models (tokenizer ops)",
                               "the tokenizer inside the model runs TensorFlow Text ops "
                               "(RegexSplitWithOffsets, FastWordpieceTokenizeWithOffsets, ...) "
                               "that tf2onnx and the LiteRT converter do not support; serve "
                               "serving/1 (TensorFlow with tensorflow_text) or model.keras")
                           for f in ("onnx", "litert")}

    def make_source(self, cfg, data, cache, prefetch_unfrozen=0):
        return TextBackboneSource({e.name: e for e in cfg.backbone_entries}, data,
                                  cfg.data.image_size, cache, seed=cfg.seed, base_dir=cfg.base_dir)

    def build_model(self, cfg, params, weights, n_classes):
        return build_raw_text_model(params, weights, n_classes, self.make_source(cfg, None, None),
                                    seed=cfg.seed)

    def input_spec(self, cfg):
        return {"kind": "text", "name": "text", "shape": [None], "dtype": "string",
                "text": "raw UTF-8 strings; tokenization is inside the model"}

    def probe(self, cfg, n=4):
        texts = ["a quiet, patient film that earns its ending",
                 "dull and far too long", "", "Ünïcödé, punctuation!? and   spaces"]
        return np.array((texts * n)[:n], dtype=object)

    def serving_endpoints(self, model, cfg):
        import tensorflow as tf

        def serve(text):
            return {"probabilities": model(text, training=False)}

        return {"serve": (serve, [tf.TensorSpec((None,), tf.string, name="text")])}

    def endpoint_probes(self, cfg, probe):
        return {"serve": probe}

    # ---- predicting
    def load_dependencies(self) -> None:
        super().load_dependencies()
        try:
            import keras_hub  # noqa: F401  (registers the tokenizer and backbone layers)
        except ImportError:
            pass

    def expand(self, x, i, metadata):
        if isinstance(x, Path):
            return _text_file_items(x)
        if isinstance(x, str):
            return [_text_item(f"text[{i}]", x)]
        raise InputError(f"input {i}: a text model takes strings or files (pathlib.Path), "
                         f"got {type(x).__name__}")

    def run(self, model, batch, *, only=False):
        import tensorflow as tf

        return np.asarray(model(tf.constant(batch, dtype=tf.string), training=False))


def _text_item(name: str, text: str) -> InputItem:
    return InputItem(name, lambda: text)


def _text_file_items(path: Path) -> list[InputItem]:
    if not path.is_file():
        return [failing(str(path), "no such file")]
    if path.suffix.lower() in (".csv", ".tsv"):
        import pandas as pd

        try:
            df = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",",
                             dtype=str, keep_default_na=False)
        except Exception as e:
            return [failing(str(path), f"not a readable CSV file ({e})")]
        if "text" in df.columns:
            col = "text"
        elif len(df.columns) == 1:
            col = df.columns[0]
        else:
            return [failing(str(path), f"expected a `text` column or a single column, found "
                                       f"{list(df.columns)}")]
        return [_text_item(f"{path}:{i + 2}", t) for i, t in enumerate(df[col].tolist())]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        return [failing(str(path), f"cannot be read as UTF-8 text ({e})")]
    return [_text_item(f"{path}:{i + 1}", t) for i, t in enumerate(lines) if t.strip()]


register(TextModality())
