"""Keras layers that travel inside saved models, so an exported model needs nothing but Keras."""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["Preprocess", "PREPROCESSING_MODES"]

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
