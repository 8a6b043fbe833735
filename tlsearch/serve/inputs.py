"""What ``POST /predict`` accepts, read under limits that keep a server's memory bounded.

A body is one image's bytes (any format ``tlsearch predict`` reads) or a JSON object:
``{"instances": [...]}`` (arrays of RGB pixels) for image models, ``{"texts": [...]}`` for text
models. Every refusal is a :class:`BadInput` with the HTTP status and a message naming the
problem; nothing here imports the web stack, so it is tested without a server.

The bounds, each checked before the memory it guards is spent:

* the body: its ``Content-Length`` and the bytes streamed are counted against
  :attr:`Limits.max_body_bytes` (``tlsearch.serve.app``);
* an image's pixels: its header's width x height against :attr:`Limits.max_pixels` before it is
  decoded (a 200-megapixel "bomb" is a few kilobytes of PNG that would decode to 600 MB);
* JSON: parsed only once the body is within its limit (nesting deeper than the parser's
  recursion limit is refused); then how many instances or texts, how long a text, and each
  instance's shape and pixels before it is resized.

Pixels become exactly what ``tlsearch predict`` makes of the same file or array (one decoder, one
resize: :func:`tlsearch.data.images.to_rgb8` and :func:`~tlsearch.data.images.resize_pixels`).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BadInput", "Limits", "decode_image_bytes", "parse_json"]


class BadInput(Exception):
    """A request the server refuses: ``status`` (4xx) and a message that names the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """What one request may hold. The defaults fit a 24-megapixel photo as one body."""

    max_body_bytes: int = 16 * 2**20
    #: an image's width x height, read from its header before decoding
    max_pixels: int = 25_000_000
    #: instances or texts in one JSON body
    max_items: int = 64
    max_text_chars: int = 100_000

    def as_dict(self) -> dict[str, int]:
        return {"max_body_bytes": self.max_body_bytes, "max_pixels": self.max_pixels,
                "max_items": self.max_items, "max_text_chars": self.max_text_chars}


def decode_image_bytes(data: bytes, size: int, limits: Limits) -> np.ndarray:
    """One encoded image as uint8 pixels, as ``tlsearch predict`` reads a file: ``(size, size,
    3)``, or as decoded when it is small enough to be resized with its batch."""
    from PIL import Image, UnidentifiedImageError

    from tlsearch.data.images import RESIZE_TOGETHER_PIXELS, _resize_one, to_rgb8

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size  # from the header: nothing decoded yet
            if w * h > limits.max_pixels:
                raise BadInput(413, f"the image is {w} x {h} = {w * h / 1e6:.1f} megapixels; this "
                                    f"server decodes at most {limits.max_pixels / 1e6:g} "
                                    f"megapixels (--max-megapixels)")
            im.load()
            pixels = np.asarray(to_rgb8(im), dtype=np.uint8)
    except BadInput:
        raise
    except Image.DecompressionBombError as e:
        raise BadInput(413, f"the image is larger than this server decodes: at most "
                            f"{limits.max_pixels / 1e6:g} megapixels (--max-megapixels); {e}"
                            ) from None
    except UnidentifiedImageError:
        raise BadInput(415, "the body is not an image PIL can read (send PNG, JPEG, GIF, BMP, "
                            "WebP or TIFF bytes, or a JSON object with Content-Type: "
                            "application/json)") from None
    except ValueError as e:  # to_rgb8: pixel values it cannot place
        raise BadInput(422, f"the image's pixels cannot be read: {e}") from None
    except (OSError, SyntaxError) as e:
        raise BadInput(422, f"the image is corrupt or truncated ({e})") from None
    except MemoryError:
        raise BadInput(413, "the image is too large to decode: out of memory") from None
    if w * h <= RESIZE_TOGETHER_PIXELS:
        return pixels  # resized with its batch, as predict does (Predictor.proba_batch)
    return _resize_one(pixels, size)


def parse_json(body: bytes, modality: str, size: int | None, limits: Limits) -> list[Any]:
    """The inputs of a JSON body: arrays at the model's size for an image model, strings for a
    text model. Raises :class:`BadInput` naming the field at fault."""
    try:
        doc = json.loads(body)
    except RecursionError:
        raise BadInput(400, "the JSON body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BadInput(400, f"the body is not valid JSON ({e})") from None
    key = "texts" if modality == "text" else "instances"
    other = "instances" if key == "texts" else "texts"
    if not isinstance(doc, dict) or key not in doc:
        hint = (f" (this is {'a text' if key == 'texts' else 'an image'} model: it takes "
                f"{key!r}, not {other!r})" if isinstance(doc, dict) and other in doc else "")
        raise BadInput(422, f"expected a JSON object {{\"{key}\": [...]}}{hint}")
    extra = sorted(set(doc) - {key})
    if extra:
        raise BadInput(422, f"unexpected fields {extra}; the body holds only {key!r}")
    items = doc[key]
    if not isinstance(items, list) or not items:
        raise BadInput(422, f"{key!r}: expected a non-empty list")
    if len(items) > limits.max_items:
        raise BadInput(413, f"{key!r}: {len(items)} items; at most {limits.max_items} a request")
    if key == "texts":
        return [_text(t, i, limits) for i, t in enumerate(items)]
    assert size is not None
    return [_instance(x, i, size, limits) for i, x in enumerate(items)]


def _text(t: Any, i: int, limits: Limits) -> str:
    if not isinstance(t, str):
        raise BadInput(422, f"texts[{i}]: expected a string, got {_kind(t)}")
    if not t.strip():
        raise BadInput(422, f"texts[{i}] is empty; send the text to classify")
    if len(t) > limits.max_text_chars:
        raise BadInput(413, f"texts[{i}]: {len(t)} characters; at most "
                            f"{limits.max_text_chars}")
    return t


def _instance(x: Any, i: int, size: int, limits: Limits) -> np.ndarray:
    from tlsearch.modalities.image import image_array

    where = f"instances[{i}]"
    if not isinstance(x, list):
        raise BadInput(422, f"{where}: expected an (H, W, 3) array of RGB pixels 0..255 as "
                            f"nested lists, got {_kind(x)}")
    try:
        a = np.asarray(x, dtype=np.float32)
    except (ValueError, TypeError):
        raise BadInput(422, f"{where}: not a rectangular array of numbers (rows of different "
                            f"lengths, or values that are not numbers)") from None
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (1, 3, 4)) or 0 in a.shape:
        raise BadInput(422, f"{where}: shape {list(a.shape)}; expected (H, W, 3) RGB, or "
                            f"(H, W), (H, W, 1), (H, W, 4); this model resizes to "
                            f"{size} x {size}")
    if a.shape[0] * a.shape[1] > limits.max_pixels:
        raise BadInput(413, f"{where}: {a.shape[0]} x {a.shape[1]} pixels; at most "
                            f"{limits.max_pixels / 1e6:g} megapixels")
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 255:
        raise BadInput(422, f"{where}: pixel values from {float(np.nanmin(a)):g} to "
                            f"{float(np.nanmax(a)):g}; expected RGB values in 0..255")
    return image_array(a, size)


def _kind(x: Any) -> str:
    return "null" if x is None else {dict: "an object", list: "a list", str: "a string",
                                     bool: "a boolean"}.get(type(x), f"a {type(x).__name__}")
