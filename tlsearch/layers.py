"""Every Keras layer that travels inside a saved model: image preprocessing, text pooling, the
raw-string text model, gradient reversal (domain adaptation), an ensemble's weighted average.
Importing :mod:`tlsearch` registers them, so an exported model loads with
``keras.saving.load_model`` and nothing else but keras-hub for text."""

from __future__ import annotations

import keras
from keras import ops

from tlsearch.params import POOLING_MODES, PREPROCESSING_MODES

__all__ = ["Preprocess", "PREPROCESSING_MODES", "TextPooling", "POOLING_MODES", "RawTextModel",
           "GradientReversal", "WeightedAverage"]

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
            # registers the decoders' preprocessor; a module beside this one, since it needs
            # keras-hub, which loading an image model does not
            import tlsearch.decoder_preprocessor  # noqa: F401
        pre = keras.saving.deserialize_keras_object(config.pop("preprocessor"))
        model = keras.saving.deserialize_keras_object(config.pop("token_model"))
        return cls(pre, model, **config)


@keras.saving.register_keras_serializable(package="tlsearch")
class GradientReversal(keras.layers.Layer):
    """Identity on the way forward; multiplies the gradient by ``-lambda`` on the way back.

    This is the layer of domain-adversarial training (Ganin & Lempitsky, ICML 2015): placed between
    a feature extractor and a domain classifier, it lets the classifier learn to tell the domains
    apart while the extractor receives the opposite gradient and learns features that hide the
    domain. ``Lambda(lambda x: -x)`` is *not* this layer: it negates the activations and leaves the
    gradient's sign to the chain rule, so the classifier sees flipped features and the extractor is
    still helped to separate the domains.

    ``lambda`` lives in a non-trainable variable, so a schedule can change it every step (from
    Python with :meth:`set_lambda`, or inside a compiled train step with ``assign``) without
    retracing the step function. The TensorFlow backend is required (``tf.custom_gradient``).
    """

    def __init__(self, lambda_: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        # created here, not in build(): a schedule may set lambda before the first call
        self.lambda_var = self.add_weight(
            name="lambda", shape=(), initializer=keras.initializers.Constant(float(lambda_)),
            trainable=False, dtype="float32",
        )

    @property
    def lambda_(self) -> float:
        """The current value, as a Python float (reads the variable)."""
        return float(ops.convert_to_numpy(self.lambda_var))

    def set_lambda(self, value) -> None:
        """Set lambda for the following steps; a float or a scalar tensor (inside a tf.function)."""
        self.lambda_var.assign(ops.cast(value, "float32"))

    def call(self, x):
        if keras.backend.backend() != "tensorflow":
            raise NotImplementedError("GradientReversal needs the TensorFlow backend")
        return _reverse_gradient(x, ops.convert_to_tensor(self.lambda_var))  # a read: current value

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "lambda_": self.lambda_}


def _reverse_gradient(x, lam):
    import tensorflow as tf

    @tf.custom_gradient
    def reverse(x, lam):
        def grad(upstream):
            # lambda is an input, not a captured variable: its value is read at each call, so a new
            # value needs no new trace; it receives no gradient
            return -tf.cast(lam, upstream.dtype) * upstream, tf.zeros_like(lam)

        return tf.identity(x), grad

    return reverse(x, lam)


@keras.saving.register_keras_serializable(package="tlsearch")
class WeightedAverage(keras.layers.Layer):
    """An ensemble's output: its members' class probabilities averaged with fixed weights (each
    member's share of the greedy selection, :mod:`tlsearch.export.selection`). Plain
    multiply-adds of constants, so every export format converts it; nothing trains."""

    def __init__(self, member_weights: list[float] | tuple[float, ...] = (1.0,), **kwargs):
        super().__init__(**kwargs)
        self.member_weights = [float(w) for w in member_weights]

    def call(self, inputs):
        parts = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if len(parts) != len(self.member_weights):
            raise ValueError(f"WeightedAverage: {len(parts)} inputs for "
                             f"{len(self.member_weights)} weights")
        out = parts[0] * self.member_weights[0]
        for x, w in zip(parts[1:], self.member_weights[1:]):
            out = out + x * w
        return out

    def compute_output_shape(self, input_shape):
        return input_shape[0] if isinstance(input_shape, list) else input_shape

    def get_config(self):
        return {**super().get_config(), "member_weights": self.member_weights}
