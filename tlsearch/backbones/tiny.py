"""Tiny twins: real Keras backbones of a few thousand weights, for tests that must run in seconds.

They have the same anatomy as the real ones (a stem, blocks with BatchNorm, a pooled output), so the
freezing, unfreezing and caching code is exercised exactly as on a ResNet.
"""

from __future__ import annotations

from tlsearch.backbones.registry import BackboneSpec, BuildRequest, register


def _build_tiny_cnn(req: BuildRequest):
    import keras

    from tlsearch.layers import Preprocess

    init = keras.initializers.GlorotUniform(seed=req.seed)
    inp = keras.Input((req.image_size, req.image_size, 3), name="image")
    x = Preprocess("unit", name="preprocess")(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", kernel_initializer=init, name="stem_conv")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for i, width in enumerate((8, 16, 16)):
        y = keras.layers.Conv2D(width, 3, padding="same", kernel_initializer=init, name=f"block{i}_conv")(x)
        y = keras.layers.BatchNormalization(name=f"block{i}_bn")(y)
        if x.shape[-1] == width:
            y = keras.layers.Add(name=f"block{i}_add")([x, y])
        x = keras.layers.ReLU(name=f"block{i}_relu")(y)
        if i == 1:  # a dropout inside the backbone, as EfficientNet and BERT have
            x = keras.layers.Dropout(0.25, seed=req.seed, name=f"block{i}_drop")(x)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inp, pooled, name="tiny_cnn")
    if req.weights:
        model.load_weights(req.weights)
    return model


register(
    BackboneSpec(
        name="tiny_cnn",
        builder=_build_tiny_cnn,
        preprocessing="unit",
        default_size=32,
        min_size=8,
        blocks=r"^(stem|block\d+)_",
        default_weights=None,
        family="test twin",
        description="4 blocks (one with dropout), ~3k params, random weights: for tests",
        tiny=True,
        weight_names=(),
    )
)
