"""Text backbones in the two-stage pipeline: tokenized once, cached, and exportable on raw strings.

:class:`TextBackboneSource` tokenizes the study's texts once per (backbone tokenizer,
``max_length``) and serves the token arrays to every trial, and the frozen outputs through the same
feature cache as images:

* stage 1 trains the head on the pooled encoder output, cached per pooling and ``max_length``;
* stage 2 trains the top N encoder layers on the hidden states below them, cached per
  ``max_length`` (pooling comes after the cut). An encoder layer needs the padding mask as well as
  the hidden states, so the cached boundary carries the mask as one extra channel: the pipeline's
  single-tensor cut works unchanged.

:func:`raw_text_model` wraps a trained token model with its tokenizer, so an exported model takes
raw strings.
"""

from __future__ import annotations

import numpy as np

from tlsearch.backbones import Backbone, resolve_weights
from tlsearch.pipeline import BackboneSource, TrialParams, build_trained_model

__all__ = ["TextBackbone", "TextBackboneSource", "raw_text_model", "build_raw_text_model"]


class TextBackbone(Backbone):
    """A text backbone that can be cut between encoder layers (hidden states + mask)."""

    def _cut_tensors(self, n_unfrozen: int):
        """(hidden states into the lowest unfrozen layer, the padding-mask input)."""
        first = self.blocks[len(self.blocks) - n_unfrozen][0]
        node = self.model.get_layer(first)._inbound_nodes[0]
        mask = self.model.input["padding_mask"]
        return node.arguments.args[0], mask

    def can_cut(self, n_unfrozen: int) -> bool:
        self._check_n(n_unfrozen)
        if n_unfrozen == 0:
            return False
        try:
            self._inner_top(n_unfrozen)
        except Exception:  # a family whose top layers read other stem tensors (DeBERTa)
            return False
        return True

    def _inner_top(self, n_unfrozen: int):
        import keras

        hidden, mask = self._cut_tensors(n_unfrozen)
        return keras.Model([hidden, mask], self.model.output, name=f"{self.name}_top_layers")

    def boundary_output(self, n_unfrozen: int):
        """The hidden states into the lowest unfrozen layer, the padding mask as one more channel."""
        import keras
        from keras import ops

        hidden, mask = self._cut_tensors(n_unfrozen)
        return keras.layers.Concatenate(axis=-1, name="pack_mask")(
            [hidden, ops.expand_dims(ops.cast(mask, hidden.dtype), -1)])

    def split(self, n_unfrozen: int):
        """(bottom, top) with the mask packed as the last channel of the boundary tensor."""
        import keras
        from keras import ops

        if not self.can_cut(n_unfrozen):
            raise ValueError(f"{self.name} cannot be cut below its top {n_unfrozen} blocks")
        hidden, _ = self._cut_tensors(n_unfrozen)
        bottom = keras.Model(self.model.input, self.boundary_output(n_unfrozen),
                             name=f"{self.name}_bottom")
        inner = self._inner_top(n_unfrozen)
        dim = int(hidden.shape[-1])
        inp = keras.Input((None, dim + 1), name="boundary")
        h = keras.layers.Lambda(lambda t: t[..., :dim], name="unpack_hidden")(inp)
        m = keras.layers.Lambda(lambda t: ops.cast(t[..., dim] > 0.5, "int32"),
                                name="unpack_mask")(inp)
        top = keras.Model(inp, inner([h, m]), name=f"{self.name}_top")
        return bottom, top


class TextBackboneSource(BackboneSource):
    """Builds text backbones and serves token arrays and frozen outputs, each computed once."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._tokens: dict[tuple, tuple[dict, dict]] = {}
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

    def build(self, name: str, params: TrialParams | None = None) -> TextBackbone:
        bb = super().build(name, params)
        return TextBackbone(bb.name, bb.model, bb.blocks, bb.fingerprint, bb.modality)

    def preprocessor(self, name: str, max_length: int):
        """The keras-hub layer from raw strings to this backbone's token inputs (one per study)."""
        from tlsearch.backbones.text import make_preprocessor

        weights, fingerprint = resolve_weights(self.entries[name], self.base_dir)
        key = (name, fingerprint, int(max_length))
        if key not in self._preprocessors:
            self._preprocessors[key] = make_preprocessor(name, weights, int(max_length))
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

    def inputs(self, params: TrialParams | None):
        """The tokenized train and validation texts, tokenized once per (tokenizer, max_length)."""
        if params is None:
            raise ValueError("text inputs depend on the trial's max_length")
        _, fingerprint = resolve_weights(self.entries[params.backbone], self.base_dir)
        key = (params.backbone, fingerprint, int(params.max_length))
        if key not in self._tokens:
            self.tokenizations += 1
            self._tokens[key] = tuple(self.tokenize(params.backbone, x, params.max_length)
                                      for x in (self.data.x_train, self.data.x_val))
        return self._tokens[key]


def raw_text_model(token_model, preprocessor, name: str = "tlsearch_text_model"):
    """A Keras model that takes a batch of raw strings: the tokenizer runs inside the model.

    ``token_model`` is a trained model on token inputs (what the pipeline trains), ``preprocessor``
    the keras-hub layer that made its inputs (:meth:`TextBackboneSource.preprocessor`). The result
    saves to ``.keras`` with the tokenizer's vocabulary and reloads with ``keras.models.load_model``
    once ``tlsearch.text_layers`` is imported.
    """
    from tlsearch.text_layers import RawTextModel

    return RawTextModel(preprocessor, token_model, name=name)


def build_raw_text_model(params: TrialParams, weights: dict, n_classes: int,
                         source: TextBackboneSource, seed: int = 0):
    """A trial's best model, taking raw strings: what ``export`` should save for a text study."""
    model = build_trained_model(params, weights, n_classes, source, seed=seed)
    return raw_text_model(model, source.preprocessor(params.backbone, params.max_length))

