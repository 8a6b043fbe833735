"""The decoders' (GPT-family) text preprocessor: a Keras layer that travels inside saved models.

It sits beside :mod:`tlsearch.layers`, on the same floor: a saved raw-string model names it, and
:class:`~tlsearch.layers.RawTextModel` imports this module to load one. It needs keras-hub, which
``tlsearch.layers`` (imported whenever Keras is) does not import.

A decoder reads left to right: each token's hidden state summarises the text up to it, so the last
real token summarises the whole text (pooling ``last``) and the first token sees nothing of it.
Decoders need three choices that encoders make in their own preprocessors:

* **Padding side: right.** Causal attention never lets a real token see a later position, and
  keras-hub numbers positions from 0 at the left, so with right padding the real tokens' states
  do not depend on how much padding follows (the tests check ``max_length`` 8 and 32 agree).
  Left padding would shift every position and need position ids keras-hub's backbones do not
  take. ``last`` pooling finds the last position the padding mask marks real.
* **Pad id.** GPT-2 has no pad token; keras-hub pads with id 0 and returns a padding mask. Since
  padding sits after every real token and the mask removes it from pooling, the pad id never
  reaches a pooled vector; using the end-of-text id instead would change nothing.
* **Start and end tokens.** The start token (GPT-2's ``<|endoftext|>``) is prepended: in
  pretraining every document follows one.
  No end token is appended, so the last real token is the text's own last token, as
  ``transformers``' ``GPT2ForSequenceClassification`` pools; a truncated text ends on its last
  kept token.

:class:`DecoderTextPreprocessor` is a keras-hub ``Preprocessor``: a Keras layer with the tokenizer
inside, so a model that takes raw strings (:class:`tlsearch.layers.RawTextModel`) saves it with
its vocabulary and merges. Its registered Keras name, ``tlsearch>DecoderTextPreprocessor``, is
what saved models record: it must not change. It always tokenizes on keras-hub's TensorFlow path,
eagerly as well as inside ``predict``. keras-hub 0.32 runs eager calls on a second, pure-Python path that splits words
differently (``don't``, ``(hello`` and ``a\n\nb`` stay one piece, where GPT-2 splits them), while
the TensorFlow path, the only one a saved model can run, splits exactly as GPT-2's own tokenizer
does (the tests check it against Hugging Face's ``tokenizers``). The ids a study caches must be the
ids the exported model computes, so both come from the TensorFlow path; it costs a few seconds of
tracing per ``max_length``.
"""

from __future__ import annotations

import keras
import keras_hub
import numpy as np
import tensorflow as tf

__all__ = ["DecoderTextPreprocessor"]


@keras.saving.register_keras_serializable(package="tlsearch")
class DecoderTextPreprocessor(keras_hub.models.Preprocessor):
    """Raw strings to a decoder's inputs ``{"token_ids", "padding_mask"}``, right-padded.

    Written for GPT-2's tokenizer; it runs any keras-hub byte-pair tokenizer that names its
    special tokens, but keras-hub's graph path splits words with GPT-2's rule for all of them. The
    start token is prepended when the tokenizer has one and ``add_start_token``; no end token by
    default (see the module docstring for why). Texts are
    truncated or padded to exactly ``sequence_length`` tokens, so every batch has one shape.
    """

    def __init__(self, tokenizer, sequence_length: int = 128, add_start_token: bool = True,
                 add_end_token: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.tokenizer = tokenizer
        self.sequence_length = int(sequence_length)
        self.add_start_token = bool(add_start_token)
        self.add_end_token = bool(add_end_token)
        self.packer = None
        self._graph_tokenize = None

    def build(self, input_shape=None):
        self.packer = keras_hub.layers.StartEndPacker(
            start_value=self.tokenizer.start_token_id,
            end_value=self.tokenizer.end_token_id,
            pad_value=self.tokenizer.pad_token_id,
            sequence_length=self.sequence_length,
            return_padding_mask=True,
        )
        self.built = True

    def _pack(self, texts):
        token_ids, padding_mask = self.packer(
            self.tokenizer(texts), sequence_length=self.sequence_length,
            add_start_value=self.add_start_token, add_end_value=self.add_end_token)
        return {"token_ids": token_ids, "padding_mask": padding_mask}

    def call(self, x, y=None, sample_weight=None):
        if not self.built:
            self.build()
        if tf.executing_eagerly():
            # keras-hub tokenizes eager calls on a separate pure-Python path: run the graph path,
            # the one `predict` of a saved model runs, so cached and served ids are the same
            if self._graph_tokenize is None:
                self._graph_tokenize = tf.function(
                    self._pack, input_signature=[tf.TensorSpec([None], tf.string)],
                    reduce_retracing=True)
            texts = tf.constant(np.asarray(x, dtype=object).astype(str).reshape(-1))
            x = {k: v.numpy() for k, v in self._graph_tokenize(texts).items()}
        else:
            x = self._pack(x)
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)

    def get_config(self):
        return {**super().get_config(), "sequence_length": self.sequence_length,
                "add_start_token": self.add_start_token, "add_end_token": self.add_end_token}
