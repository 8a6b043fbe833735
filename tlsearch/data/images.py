"""Image data: a folder per class (the layout users have), and NumPy ``.npz`` arrays.

Every image is decoded once, converted to RGB and resized to ``data.image_size`` up front, so that a
truncated JPEG or a stray text file is reported before the first trial, with its path.

Pixels are 8-bit RGB everywhere. :func:`to_rgb8` is the one conversion of a decoded image, used for
training and by ``tlsearch predict``: a 16-bit image keeps its high byte, as TensorFlow's PNG
decoder in the exported SavedModel does, instead of clipping at 255 (which turns mid-grey white).
Arrays from an ``.npz`` file are taken only when their scale is unambiguous (see
:func:`pixels_to_uint8`); anything else is refused with its dtype and range, never clipped.
"""

from __future__ import annotations

import os

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from tlsearch.data.formats import (MISSING_LABEL_NOTE, RawData, format_file_list,
                                   is_missing_label, register_format)
from tlsearch.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


#: what :func:`pixels_to_uint8` takes without being told the range
ACCEPTED_PIXELS = "uint8, integers in 0..255, or floats in 0..1 or 0..255"


def _g(v) -> str:
    return f"{float(v):g}"


def pixels_to_uint8(x: np.ndarray, pixel_range=None) -> np.ndarray:
    """Pixel values as uint8, when their scale is certain; otherwise ValueError("is <dtype> ...").

    Taken as they are: uint8, and integers of any width within 0..255. Floats are 0..1 when all of
    them lie in 0..1, else 0..255 when all lie in 0..255 (rounded, not truncated). Anything else
    (floats in -1..1, 16-bit values) could mean several things, and clipping it would train on
    damaged images without a word; ``pixel_range`` (``data.pixel_range``) says which values map to
    0 and 255.
    """
    integer = np.issubdtype(x.dtype, np.integer)
    if not (integer or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"is {x.dtype}; expected {ACCEPTED_PIXELS}")
    if x.dtype == np.uint8 and pixel_range is None:
        return x
    if x.size == 0:
        return x.astype(np.uint8)
    if not integer and not np.isfinite(x).all():
        raise ValueError(f"is {x.dtype} and holds NaN or infinite values")
    lo, hi = x.min(), x.max()
    seen = f"is {x.dtype} with values from {_g(lo)} to {_g(hi)}"
    if pixel_range is not None:
        low, high = (float(v) for v in pixel_range)
        if lo < low or hi > high:
            raise ValueError(f"{seen}, outside `data.pixel_range` [{_g(low)}, {_g(high)}]")
        scaled = (x.astype(np.float32) - low) * np.float32(255.0 / (high - low))
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if lo >= 0 and hi <= 255:
        if integer:
            return x.astype(np.uint8)
        f = x.astype(np.float32)
        return np.rint(f * 255 if hi <= 1 else f).astype(np.uint8)
    raise ValueError(f"{seen}; expected {ACCEPTED_PIXELS}. Set `data.pixel_range: [low, high]` "
                     f"to map another range to 0..255 (e.g. [-1, 1], or [0, 65535] for 16 bits)")


def to_rgb8(im):
    """A decoded PIL image as 8-bit RGB: the one conversion for training and for prediction.

    ``convert("RGB")`` clips the 16- and 32-bit modes (I;16, I, F) at 255, so an image of 16-bit
    mid-grey (32768) would become white. Integer modes are taken as 16-bit and keep their high
    byte (32768 -> 128), which is what TensorFlow's PNG decoder in the exported SavedModel does and
    what PIL itself does to 16-bit RGB PNGs. Float images follow the rule of
    :func:`pixels_to_uint8`. Raises ValueError for values it cannot place.
    """
    from PIL import Image

    mode = im.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        a = np.asarray(im)
        if a.size and mode == "F":
            lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
            if not np.isfinite(a).all() or lo < 0 or hi > 255:
                raise ValueError(f"F pixels from {lo:g} to {hi:g}"
                                 + ("" if np.isfinite(a).all() else ", and NaN or infinite ones")
                                 + ": expected floats in 0..1 or 0..255")
            a8 = pixels_to_uint8(a)
        elif a.size:
            lo, hi = int(a.min()), int(a.max())
            if lo < 0 or hi > 65535:
                raise ValueError(f"{mode} pixels from {lo} to {hi}: expected 16-bit values, "
                                 f"0..65535")
            a8 = (a.astype(np.uint32) >> 8).astype(np.uint8)
        else:
            a8 = a.astype(np.uint8)
        im = Image.fromarray(a8)
    return im.convert("RGB")


def resize_pixels(x, size: int):
    """RGB pixels ``(N, H, W, 3)`` (0..255) resized to ``(N, size, size, 3)``, rounded to whole
    values: the ONE resize of tlsearch. Training images, ``tlsearch predict`` and the exported
    SavedModel's endpoints all call it, so a picture of any size gets the same pixels everywhere
    (bilinear with antialiasing, TensorFlow's op; identity at the target size). Takes NumPy arrays
    or tensors, inside a traced function too; returns float32."""
    from keras import ops

    x = ops.cast(x, "float32")
    y = ops.image.resize(x, (size, size), interpolation="bilinear", antialias=True)
    return ops.clip(ops.round(y), 0.0, 255.0)


def _resize_one(a: np.ndarray, size: int) -> np.ndarray:
    """One uint8 RGB image resized by :func:`resize_pixels`, through a function traced once per
    target size: the same op, so the same pixels (tested), for 1.5 ms an image instead of 4 ms
    eagerly on 2 cores, and without holding the GIL, so readers in threads overlap."""
    if a.shape[:2] == (size, size):
        return a
    return resize_together(a[None], size)[0].astype(np.uint8)


#: images of at most this many pixels may be kept as decoded and resized with the others of their
#: size in a batch (:func:`resize_together`): for small images the call, not the resize, is the
#: cost (0.6 ms of CPU an image alone); larger ones are resized as they are read, so a batch of
#: photos never waits in memory at full size
RESIZE_TOGETHER_PIXELS = 256 * 256


def resize_together(x: np.ndarray, size: int) -> np.ndarray:
    """uint8 images ``(N, H, W, 3)`` of one size, resized in one call of a function traced once
    per target size: float32, the pixels :func:`resize_pixels` gives each image alone."""
    return np.asarray(_resizer(size)(x))


_RESIZERS: dict[int, Callable] = {}


def _resizer(size: int) -> Callable:
    fn = _RESIZERS.get(size)
    if fn is None:
        import tensorflow as tf

        fn = tf.function(lambda x: resize_pixels(x, size), autograph=False,
                         input_signature=[tf.TensorSpec((None, None, None, 3), tf.uint8)])
        _RESIZERS[size] = fn  # two threads tracing at once: one function is kept, both work
    return fn


def decode_image(path: Path, size: int, *, keep_small: bool = False) -> np.ndarray:
    """One image as uint8 (size, size, 3). Raises ValueError with a reason a user can act on.

    ``keep_small``: an image of at most :data:`RESIZE_TOGETHER_PIXELS` comes back as decoded,
    (H, W, 3), for the caller to resize with others (:func:`resize_together`)."""
    from PIL import Image, UnidentifiedImageError

    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"unsupported format {path.suffix or '(no suffix)'}; expected one of "
                         f"{', '.join(IMAGE_SUFFIXES)}")
    if path.is_symlink() and not path.exists():
        raise ValueError(f"a link to {os.readlink(path)!r}, which does not exist")
    if path.stat().st_size == 0:
        raise ValueError("empty file")
    try:
        with Image.open(path) as im:
            im.load()
            a = np.asarray(to_rgb8(im), dtype=np.uint8)
            if keep_small and a.shape[0] * a.shape[1] <= RESIZE_TOGETHER_PIXELS:
                return a
            return _resize_one(a, size)
    except ValueError:
        raise
    except UnidentifiedImageError:
        raise ValueError("not an image PIL can read") from None
    except Image.DecompressionBombError as e:
        # PIL's guard against a small file that expands to gigabytes (over twice
        # Image.MAX_IMAGE_PIXELS, about 179 megapixels by default)
        raise ValueError(f"too large to decode safely ({e})") from None
    except MemoryError:
        raise ValueError("too large to decode: out of memory") from None
    except (OSError, SyntaxError) as e:
        raise ValueError(f"corrupt or truncated ({e})") from None
    except Exception as e:  # a decoder's own bug on one odd file: still name the file
        raise ValueError(f"cannot be decoded ({type(e).__name__}: {e})") from None


def decode_images(files: list[Path], size: int) -> tuple[list[np.ndarray | None], list[str]]:
    """Decode in parallel; returns arrays (None where bad) and 'path: reason' for each bad file."""

    def one(p: Path):
        try:
            return decode_image(p, size), None
        except ValueError as e:
            return None, f"{p}: {e}"

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, files))
    return [r[0] for r in results], [r[1] for r in results if r[1]]


@register_format("image_folder", is_dir=True)
def load_image_folder(cfg, path: Path, image_size: int) -> RawData:
    if not path.is_dir():
        raise DataError(f"{str(path)!r}: expected a folder with one sub-folder per class")
    class_dirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{str(path)!r} has no class folders: expected {path}/<class>/<image files>")
    files, labels, problems = [], [], []
    for d in class_dirs:
        # a dangling link is a file the user meant to give: refused or skipped by name, like
        # any file that cannot be read (it was left out without a word)
        found = sorted(f for f in d.rglob("*") if (f.is_file() or (f.is_symlink() and not
                                                                    f.exists()))
                       and not f.name.startswith("."))
        if not found:
            problems.append(f"{d}: empty class folder")
        files += found
        labels += [d.name] * len(found)
    arrays, bad = decode_images(files, image_size)
    if bad and cfg.skip_bad_files:
        _refuse_dropped_classes(path, class_dirs, labels, arrays, bad)
    if problems:
        raise DataError(f"{str(path)!r}: class folders without images:\n" + format_file_list(problems))
    if bad and not cfg.skip_bad_files:
        raise DataError(
            f"{len(bad)} of {len(files)} files under {str(path)!r} cannot be used:\n"
            + format_file_list(bad)
            + "\n  Remove or fix them, or set `data.skip_bad_files: true` to skip them."
        )
    keep = [i for i, a in enumerate(arrays) if a is not None]
    if not keep:
        raise DataError(f"{str(path)!r}: no readable images")
    x = np.stack([a for a in arrays if a is not None])
    return RawData(x, [labels[i] for i in keep], "image", skipped=bad,
                   sources=[str(files[i]) for i in keep])


def _refuse_dropped_classes(path: Path, class_dirs, labels, arrays, bad) -> None:
    """Skipping files is for a few bad ones: a class that loses all of them is refused, by name.

    Otherwise the study would quietly run with one class fewer than the folder shows. ``bad`` holds
    one reason per file whose array is None, in the same order.
    """
    reasons = iter(bad)
    per_class: dict[str, list] = {}
    for label, a in zip(labels, arrays):
        per_class.setdefault(label, []).append(next(reasons) if a is None else None)
    lost = [d.name for d in class_dirs if per_class.get(d.name) and all(per_class[d.name])]
    if lost:
        shown = "; ".join(f"class {c!r}: none of its {len(per_class[c])} files can be used"
                          for c in lost)
        raise DataError(
            f"{str(path)!r}: {shown}, and `data.skip_bad_files` would drop the whole class:\n"
            + format_file_list([r for c in lost for r in per_class[c]])
            + "\n  Fix those files, or remove the class folder if the class is not wanted."
        )


def resize_batch(x: np.ndarray, size: int) -> np.ndarray:
    """uint8 images (N, H, W, 1 or 3) as (N, size, size, 3)."""
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if x.shape[1:3] == (size, size):
        return x
    out = np.empty((len(x), size, size, 3), dtype=np.uint8)
    for i in range(0, len(x), 256):
        out[i:i + 256] = np.asarray(resize_pixels(x[i:i + 256], size)).astype(np.uint8)
    return out


@register_format("npz", suffixes=(".npz",))
def load_npz(cfg, path: Path, image_size: int) -> RawData:
    """Keys ``x`` and ``y`` (or ``x_train``/``y_train``); optional ``class_names`` for integer labels."""
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            xk = "x" if "x" in keys else "x_train"
            yk = "y" if "y" in keys else "y_train"
            if xk not in keys or yk not in keys:
                raise DataError(f"{str(path)!r}: expected arrays `x` and `y` (or `x_train` and "
                                f"`y_train`), found {sorted(keys)}")
            x, y = z[xk], z[yk]
            names = [str(c) for c in z["class_names"]] if "class_names" in keys else None
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{str(path)!r}: not a readable .npz file ({e})") from None
    if len(x) != len(y):
        raise DataError(f"{str(path)!r}: {len(x)} images but {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"{str(path)!r}: arrays `{xk}` and `{yk}` hold no examples (0 images)")
    if y.ndim != 1:
        raise DataError(f"{str(path)!r}: labels must be one per image (1-D), got shape {y.shape}")
    if names is not None and np.issubdtype(y.dtype, np.integer):
        if y.min() < 0 or y.max() >= len(names):
            raise DataError(f"{str(path)!r}: labels outside 0..{len(names) - 1} for class_names")
        labels = [names[i] for i in y]
    else:
        values = y.tolist()
        missing = [i for i, v in enumerate(values) if is_missing_label(v)]
        if missing:
            shown = ", ".join(f"{i} ({_shown_missing(values[i])})" for i in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise DataError(
                f"{str(path)!r}: {len(missing)} of {len(values)} labels are missing: index "
                f"{shown}{more}. Remove those examples from `{xk}` and `{yk}`, or label them "
                f"(labels read as missing: {MISSING_LABEL_NOTE})"
            )
        labels = [str(v) for v in values]
    return RawData(npz_pixels(x, xk, repr(str(path)), getattr(cfg, "pixel_range", None),
                              image_size), labels, "image", sources=[str(i) for i in range(len(x))])


def npz_pixels(x: np.ndarray, key: str, where: str, pixel_range, image_size: int) -> np.ndarray:
    """An .npz image array as uint8 RGB at ``image_size``: (N, H, W) or (N, H, W, 1|3), pixels
    read as :func:`pixels_to_uint8` reads them; problems name ``where`` (the file) and ``key``."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(f"{where}: images must be (N, H, W), (N, H, W, 1) or (N, H, W, 3); "
                        f"got {x.shape}")
    try:
        x = pixels_to_uint8(x, pixel_range)
    except ValueError as e:
        raise DataError(f"{where}: array `{key}` {e}") from None
    return resize_batch(x, image_size)


def _shown_missing(v) -> str:
    return "empty" if isinstance(v, str) and not v.strip() else str(v)
