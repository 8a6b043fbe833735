"""Keras layers that travel inside saved models, so an exported model needs nothing but Keras."""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["GradientReversal", "Preprocess", "PREPROCESSING_MODES"]

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)

#: mode -> what it does to RGB pixels in [0, 255]
PREPROCESSING_MODES = {
    "none": "passed through as float32 (the network scales its own inputs)",
    "unit": "x / 255",
    "tf": "x / 127.5 - 1 (Inception, MobileNetV2, Xception)",
    "caffe": "RGB to BGR, minus the ImageNet channel means (VGG, ResNet v1)",
    "torch": "(x / 255 - ImageNet mean) / ImageNet std",
    "lite": "(x - 127) / 128 (EfficientNet-Lite)",
}


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
