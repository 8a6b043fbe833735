"""Decoder (GPT-family) text inputs: a preprocessor that travels inside saved models, and the byte-level
BPE vocabulary of the tiny test twin.

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
its vocabulary and merges. It always tokenizes on keras-hub's TensorFlow path, eagerly as well as
inside ``predict``. keras-hub 0.32 runs eager calls on a second, pure-Python path that splits words
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

__all__ = ["DecoderTextPreprocessor", "byte_level_bpe", "TINY_GPT2_WORDS", "tiny_gpt2_tokenizer"]

#: words the tiny GPT-2 twin's BPE merges whole (others fall back to bytes): the text tests' words
TINY_GPT2_WORDS = ("a", "the", "is", "was", "it", "this", "film", "movie", "not", "very", "good",
                   "great", "fine", "fun", "bad", "awful", "dull", "poor", "plot", "acting", "and",
                   "but")


def byte_level_bpe(words, specials=("<|endoftext|>",)) -> tuple[dict[str, int], list[str]]:
    """A complete byte-level BPE vocabulary and merges, built in code.

    The vocabulary holds the 256 byte symbols GPT-2 maps bytes to (so any string tokenizes:
    keras-hub maps a symbol missing from the vocabulary to -1, which no embedding accepts), then
    each word of ``words`` (as its UTF-8 byte symbols) merged left to right, with and without a
    leading space (the symbol ``Ġ``), then ``specials`` at the end. The same vocabulary and
    merges in Hugging Face's ``tokenizers`` give the same ids, which the tests check.
    """
    from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

    byte_values, symbols = bytes_to_unicode()
    symbol_of = {b[0]: s for b, s in zip(byte_values, symbols)}  # byte value -> symbol
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab.setdefault(s, len(vocab))
    merges: list[str] = []
    for word in words:
        for text in (" " + word, word):
            pieces = [symbol_of[b] for b in text.encode("utf-8")]
            current = pieces[0]
            for piece in pieces[1:]:
                rule = f"{current} {piece}"
                if rule not in merges:
                    merges.append(rule)
                current += piece
                vocab.setdefault(current, len(vocab))
    for s in specials:
        vocab.setdefault(s, len(vocab))
    return vocab, merges


def tiny_gpt2_tokenizer():
    """The tiny twin's ``GPT2Tokenizer``: byte-level, ~400 ids, every test word one token."""
    vocab, merges = byte_level_bpe(TINY_GPT2_WORDS)
    return keras_hub.tokenizers.GPT2Tokenizer(vocabulary=vocab, merges=merges)


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
