"""The ``keras.applications`` families, with their own preprocessing and block structure.

``weights: imagenet`` downloads once into ``~/.keras/models`` (or reads that cache); air-gapped
sites copy the ``.h5`` file in and give its path as ``weights``.
"""

from __future__ import annotations

from tlsearch.backbones.registry import BackboneSpec, BuildRequest, register


def _builder(attr: str, preprocessing: str, **extra):
    def build(req: BuildRequest):
        import keras

        from tlsearch.layers import Preprocess

        inp = keras.Input((req.image_size, req.image_size, 3), name="image")
        x = Preprocess(preprocessing, name="preprocess")(inp)
        app = getattr(keras.applications, attr)(
            include_top=False, weights=req.weights, input_tensor=x, **extra
        )
        pooled = keras.layers.GlobalAveragePooling2D(name="pool")(app.output)
        return keras.Model(inp, pooled, name=attr.lower())

    return build


def _add(name, attr, preprocessing, blocks, default_size, min_size, description, **extra):
    register(
        BackboneSpec(
            name=name,
            builder=_builder(attr, preprocessing, **extra),
            preprocessing=preprocessing,
            default_size=default_size,
            min_size=min_size,
            blocks=blocks,
            family="keras.applications",
            description=description,
        )
    )


_add("vgg16", "VGG16", "caffe", r"^(block\d)_", 224, 32, "VGG16 (2014), 14.7M params, 5 conv blocks")
_add("vgg19", "VGG19", "caffe", r"^(block\d)_", 224, 32, "VGG19 (2014), 20.0M params, 5 conv blocks")
_RESNET = r"^(conv1|conv\d_block\d+)_"
_add("resnet50", "ResNet50", "caffe", _RESNET, 224, 32, "ResNet50 (2015), 23.6M params, 17 blocks")
_add("resnet101", "ResNet101", "caffe", _RESNET, 224, 32, "ResNet101, 42.7M params, 34 blocks")
_add("resnet50v2", "ResNet50V2", "tf", _RESNET, 224, 32, "ResNet50V2, 23.6M params, 17 blocks")
_add("inception_v3", "InceptionV3", "tf", r"^mixed\d+$", 299, 75, "InceptionV3, 21.8M params, 11 blocks")
_add(
    "mobilenet_v2", "MobileNetV2", "tf", r"^(Conv1|expanded_conv|block_\d+|Conv_1)", 224, 32,
    "MobileNetV2, 2.3M params, 18 blocks",
)
_MBV3 = r"^(conv|expanded_conv(?:_\d+)?|conv_1)[_/]"
_add("mobilenet_v3_small", "MobileNetV3Small", "none", _MBV3, 224, 32,
     "MobileNetV3-Small, 0.9M params; scales its own inputs", include_preprocessing=True)
_add("mobilenet_v3_large", "MobileNetV3Large", "none", _MBV3, 224, 32,
     "MobileNetV3-Large, 3.0M params; scales its own inputs", include_preprocessing=True)
_EFF = r"^(stem|block\d[a-z]|top)_"
for _i, _size, _params in [(0, 224, "4.0M"), (1, 240, "6.6M"), (2, 260, "7.8M"), (3, 300, "10.8M")]:
    _add(f"efficientnet_b{_i}", f"EfficientNetB{_i}", "none", _EFF, _size, 32,
         f"EfficientNetB{_i}, {_params} params; scales its own inputs")
