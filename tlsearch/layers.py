"""Every Keras layer that travels inside a saved model: image preprocessing, text pooling, the
raw-string text model. Importing :mod:`tlsearch` registers them, so an exported model loads with
``keras.saving.load_model`` and nothing else but keras-hub for text."""

from __future__ import annotations

import keras
from keras import ops

from tlsearch.params import POOLING_MODES, PREPROCESSING_MODES

__all__ = ["Preprocess", "PREPROCESSING_MODES", "TextPooling", "POOLING_MODES", "RawTextModel"]

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)



@keras.saving.register_keras_serializable(package="tlsearch")
class Preprocess(keras.layers.Layer):
    """A backbone's own input scaling, as a layer: the exported model takes raw 0..255 pixels.

    Keeping the scaling inside the model (rather than in a data pipeline) is what makes an exported
    model safe to call on raw images; it has no weights and never trains.
    """

    def __init__(self, mode: str = "none", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(f"unknown preprocessing {mode!r}; expected one of {list(PREPROCESSING_MODES)}")
        self.mode = mode

    def call(self, x):
        x = ops.cast(x, "float32")
        if self.mode == "unit":
            return x / 255.0
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "lite":
            return (x - 127.0) / 128.0
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)
            return x - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype="float32")
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, dtype="float32")
            std = ops.convert_to_tensor(_TORCH_STD, dtype="float32")
            return (x / 255.0 - mean) / std
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}




@keras.saving.register_keras_serializable(package="tlsearch")
class TextPooling(keras.layers.Layer):
    """One vector per text from the encoder's hidden states ``(batch, length, dim)``.

    Mean pooling divides by the number of real tokens (at least 1e-9, as sentence-transformers
    does), so padding never dilutes short texts and the result does not depend on ``max_length``.
    ``last`` takes the vector at the highest position the mask marks real (so it serves right or
    left padding alike; position 0 if a row has no real token); a gather, not a masked sum, so the
    result is that vector exactly.
    """

    def __init__(self, mode: str = "cls", **kwargs):
        super().__init__(**kwargs)
        if mode not in POOLING_MODES:
            raise ValueError(f"unknown pooling {mode!r}; expected one of {list(POOLING_MODES)}")
        self.mode = mode

    def call(self, hidden, padding_mask):
        if self.mode == "cls":
            return hidden[:, 0, :]
        if self.mode == "last":
            mask = ops.cast(padding_mask, "int32")
            positions = ops.arange(1, ops.shape(mask)[1] + 1, dtype="int32")
            last = ops.maximum(ops.max(mask * positions[None, :], axis=1) - 1, 0)
            index = ops.broadcast_to(ops.reshape(last, (-1, 1, 1)),
                                     (ops.shape(hidden)[0], 1, ops.shape(hidden)[2]))
            return ops.take_along_axis(hidden, index, axis=1)[:, 0, :]
        m = ops.expand_dims(ops.cast(padding_mask, hidden.dtype), -1)
        return ops.sum(hidden * m, axis=1) / ops.maximum(ops.sum(m, axis=1), 1e-9)

    def compute_output_shape(self, hidden_shape, padding_mask_shape=None):
        return (hidden_shape[0], hidden_shape[-1])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="tlsearch")
class RawTextModel(keras.Model):
    """A trained model on token inputs with its tokenizer in front: it takes a batch of strings.

    A subclassed model rather than a functional graph: a keras-hub tokenizer gets its vocabulary
    from the saved assets only after the model is rebuilt, and a functional graph (or an eager
    build) would call it before that while being reloaded.
    """

    def __init__(self, preprocessor, token_model, **kwargs):
        super().__init__(**kwargs)
        self.preprocessor = preprocessor
        self.token_model = token_model
        self._wanted = sorted(t.name for t in token_model.inputs)

    @property
    def input_dtype(self):
        # what Keras uses for the SavedModel's default signature of a subclassed model
        return "string"

    def call(self, texts):
        tokens = self.preprocessor(texts)
        return self.token_model({k: tokens[k] for k in self._wanted}, training=False)

    def get_config(self):
        pre = keras.saving.serialize_keras_object(self.preprocessor)
        pre.pop("build_config", None)  # built on first call, once its vocabulary is loaded
        return {
            **super().get_config(),
            "preprocessor": pre,
            "token_model": keras.saving.serialize_keras_object(self.token_model),
        }

    def build_from_config(self, config):
        # The token model is built by its own config; calling the tokenizer now would run it
        # before its vocabulary is read from the saved assets.
        self.built = True

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "DecoderTextPreprocessor" in str(config.get("preprocessor", {}).get("class_name")):
            import tlsearch.backbones.decoders  # noqa: F401  (registers the decoders' preprocessor)
        pre = keras.saving.deserialize_keras_object(config.pop("preprocessor"))
        model = keras.saving.deserialize_keras_object(config.pop("token_model"))
        return cls(pre, model, **config)
