"""Decoder (GPT-family) backbones' helpers: the byte-level BPE vocabulary of the tiny test twin.

Why decoders are padded on the right, prepend a start token and pool the last real token is told
in :mod:`tlsearch.decoder_preprocessor`, beside the preprocessor that does it (it travels inside
saved models, so it lives on the floor of :mod:`tlsearch.layers`; it is re-exported here).
"""

from __future__ import annotations

import keras_hub

from tlsearch.decoder_preprocessor import DecoderTextPreprocessor

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
