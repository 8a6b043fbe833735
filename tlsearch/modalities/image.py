"""Images: raw RGB pixels in 0..255 at the study's image size; the backbone's scaling is inside
the model. Features are computed by the plain :class:`~tlsearch.train.features.BackboneSource`."""

from __future__ import annotations

import functools
import io
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tlsearch.data.images import resize_pixels
from tlsearch.errors import InputError
from tlsearch.modalities.registry import InputItem, Modality, failing, register

__all__ = ["ImageModality"]


class ImageModality(Modality):
    name = "image"
    endpoint_notes = {
        "serve": "RGB pixels 0..255 of any size, resized inside by the resize training "
                           "used (bilinear with antialiasing, rounded)",
        "serve_image_bytes": "encoded JPEG/PNG/GIF/BMP bytes, decoded and resized inside the model "
                             "by the resize training used",
    }

    # ---- training
    def make_source(self, cfg, data, cache, prefetch_unfrozen=0):
        from tlsearch.train.features import BackboneSource

        return BackboneSource({e.name: e for e in cfg.backbone_entries}, data,
                              cfg.data.image_size, cache, seed=cfg.seed, base_dir=cfg.base_dir,
                              prefetch_unfrozen=prefetch_unfrozen)

    # ---- the exported model
    def build_model(self, cfg, params, weights, n_classes):
        import keras

        from tlsearch.train.pipeline import build_trained_model

        source = self.make_source(cfg, None, None)
        model = build_trained_model(params, weights, n_classes, source, seed=cfg.seed)
        # one tensor in, one out (not lists of one): the plain signature serving tools expect
        return keras.Model(model.inputs[0], model.outputs[0], name="tlsearch_model")

    def input_spec(self, cfg):
        s = cfg.data.image_size
        return {
            "kind": "image",
            "name": "image",
            "shape": [None, s, s, 3],
            "dtype": "float32",
            "image_size": s,
            "pixels": "RGB in 0..255 (uint8 values; no scaling: the model scales them itself)",
            "resize": "bilinear with antialiasing to image_size x image_size, rounded: "
                      "tlsearch.data.images.resize_pixels, as in training; the SavedModel "
                      "endpoints take any size and resize inside; model.keras, ONNX and LiteRT "
                      "take image_size x image_size"
        }

    def probe(self, cfg, n=4):
        s = cfg.data.image_size
        rng = np.random.default_rng(0)
        # smooth images, not pure noise, so resizing and decoding behave as on photos
        base = rng.integers(0, 256, (n, 4, 4, 3)).astype(np.float32)
        up = np.repeat(np.repeat(base, math.ceil(s / 4), axis=1), math.ceil(s / 4), axis=2)
        noise = rng.normal(0, 12, (n, s, s, 3))
        return np.clip(up[:, :s, :s] + noise, 0, 255).round().astype(np.float32)

    def serving_endpoints(self, model, cfg):
        import tensorflow as tf

        s = cfg.data.image_size
        spec = tf.TensorSpec((None, s, s, 3), tf.float32, name="image")
        # both endpoints call one traced function: the network is traced (and stored) once
        probabilities = tf.function(lambda x: model(x, training=False), input_signature=[spec],
                                    autograph=False)

        def serve(image):
            # any size: resized inside, by the same function training used
            images = resize_pixels(image, s)
            images.set_shape((None, s, s, 3))
            return {"probabilities": probabilities(images)}

        def decode_one(data):
            img = tf.io.decode_image(data, channels=3, expand_animations=False)
            return resize_pixels(img[None], s)[0]

        def serve_image_bytes(image_bytes):
            images = tf.map_fn(decode_one, image_bytes, fn_output_signature=tf.float32)
            images.set_shape((None, s, s, 3))
            return {"probabilities": probabilities(images)}

        return {
            "serve": (serve, [tf.TensorSpec((None, None, None, 3), tf.float32, name="image")]),
            "serve_image_bytes": (serve_image_bytes,
                                  [tf.TensorSpec((None,), tf.string, name="image_bytes")]),
        }

    def endpoint_probes(self, cfg, probe):
        from PIL import Image

        encoded = []
        for img in probe.astype(np.uint8):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            encoded.append(buf.getvalue())
        return {"serve": probe, "serve_image_bytes": np.array(encoded, dtype=object)}

    # ---- predicting
    def is_single(self, x: Any) -> bool:
        try:
            from PIL import Image

            if isinstance(x, Image.Image):
                return True
        except ImportError:  # pragma: no cover
            pass
        return isinstance(x, np.ndarray) and x.ndim in (2, 3) and x.dtype != object

    def input_items(self, inputs, metadata):
        if isinstance(inputs, np.ndarray) and inputs.ndim == 4:
            size = _size(metadata)
            return [InputItem(f"array[{i}]", lambda a=a: image_array(a, size))
                    for i, a in enumerate(inputs)]
        return None

    def expand(self, x, i, metadata):
        size = _size(metadata)

        def read_file(p: Path) -> np.ndarray:
            return image_file(p, size, keep_small=True)  # resized in collate, with its batch

        if isinstance(x, (str, Path)):
            p = Path(x)
            if p.is_dir():
                return _image_folder_items(p, read_file)
            if not p.exists():
                return [failing(str(p), "no such file or folder")]
            return [InputItem(str(p), lambda p=p: read_file(p))]
        if self.is_single(x):
            return [InputItem(f"image[{i}]", lambda x=x: image_array(x, size))]
        if isinstance(x, np.ndarray) and x.ndim == 4:
            return [InputItem(f"array[{i}][{j}]", lambda a=a: image_array(a, size))
                    for j, a in enumerate(x)]
        raise InputError(f"input {i}: expected an image file, a folder, a PIL image or an "
                         f"(H, W, 3) array, got {type(x).__name__}")

    def collate(self, batch, metadata):
        from tlsearch.data.images import resize_together

        size = _size(metadata)
        out = np.empty((len(batch), size, size, 3), np.float32)
        groups: dict[tuple, list[int]] = {}
        for i, a in enumerate(batch):
            groups.setdefault((a.shape, a.dtype), []).append(i)
        for (shape, dtype), rows in groups.items():
            x = np.stack([batch[i] for i in rows])
            if shape[:2] != (size, size):  # small files kept as decoded (uint8)
                x = (resize_together(x, size) if dtype == np.uint8
                     else np.asarray(resize_pixels(x, size)))
            out[rows] = x
        return out

    def run(self, model, batch, *, only=False):
        # Tracing the predict graph costs more than it saves for a single batch (0.84 s against
        # 0.56 s run eagerly for 64 images at 96 px on 2 cores; 0.12 s a batch once traced).
        if only:
            return np.asarray(model(np.stack(batch), training=False))
        return np.asarray(model.predict_on_batch(np.stack(batch)))


def _size(metadata: dict) -> int:
    return int(metadata.get("input", {}).get("image_size"))


def image_file(path: Path, size: int, *, keep_small: bool = False) -> np.ndarray:
    from tlsearch.data.images import decode_image

    try:
        return decode_image(path, size, keep_small=keep_small)
    except (ValueError, OSError) as e:
        raise InputError(f"{str(path)!r}: {e}") from None


def image_array(x: Any, size: int) -> np.ndarray:
    from PIL import Image

    from tlsearch.data.images import to_rgb8

    if isinstance(x, Image.Image):
        try:
            x = np.asarray(to_rgb8(x))  # as training decoded its images: 16 bits scaled
        except ValueError as e:
            raise InputError(f"a PIL image of mode {x.mode}: {e}") from None
    a = np.asarray(x)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise InputError(f"an image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); "
                         f"got {a.shape}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    a = np.clip(a[..., :3], 0, 255)
    if a.shape[:2] != (size, size):
        a = np.asarray(resize_pixels(a[None], size))[0]
    return a.astype(np.float32)


def _image_folder_items(folder: Path, read: Callable[[Path], np.ndarray]) -> list[InputItem]:
    from tlsearch.data.images import IMAGE_SUFFIXES

    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        return [failing(str(folder), f"no image files ({', '.join(IMAGE_SUFFIXES)}) in this "
                                     f"folder")]
    return [InputItem(str(p), functools.partial(read, p)) for p in files]


register(ImageModality())
