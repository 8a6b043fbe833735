"""Image data: a folder per class (the layout users have), and NumPy ``.npz`` arrays.

Every image is decoded once, converted to RGB and resized to ``data.image_size`` up front, so that a
truncated JPEG or a stray text file is reported before the first trial, with its path.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tlsearch.data import RawData, format_file_list, register_format
from tlsearch.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def decode_image(path: Path, size: int) -> np.ndarray:
    """One image as uint8 (size, size, 3). Raises ValueError with a reason a user can act on."""
    from PIL import Image, UnidentifiedImageError

    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"unsupported format {path.suffix or '(no suffix)'}; expected one of "
                         f"{', '.join(IMAGE_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise ValueError("empty file")
    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except UnidentifiedImageError:
        raise ValueError("not an image PIL can read") from None
    except (OSError, SyntaxError) as e:
        raise ValueError(f"corrupt or truncated ({e})") from None


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
        found = sorted(f for f in d.rglob("*") if f.is_file() and not f.name.startswith("."))
        if not found:
            problems.append(f"{d}: empty class folder")
        files += found
        labels += [d.name] * len(found)
    arrays, bad = decode_images(files, image_size)
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
    x = np.stack([arrays[i] for i in keep])
    return RawData(x, [labels[i] for i in keep], "image", skipped=bad)


def _resize_batch(x: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(f"images must be (N, H, W), (N, H, W, 1) or (N, H, W, 3); got {x.shape}")
    if x.dtype != np.uint8:
        if np.issubdtype(x.dtype, np.floating) and x.size and float(np.nanmax(x)) <= 1.0:
            x = x * 255.0
        if not np.isfinite(x).all():
            raise DataError("the image array holds NaN or infinite values")
        x = np.clip(x, 0, 255).astype(np.uint8)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if x.shape[1:3] == (size, size):
        return x
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BILINEAR))
                     for im in x])


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
    if y.ndim != 1:
        raise DataError(f"{str(path)!r}: labels must be one per image (1-D), got shape {y.shape}")
    if names is not None and np.issubdtype(y.dtype, np.integer):
        if y.min() < 0 or y.max() >= len(names):
            raise DataError(f"{str(path)!r}: labels outside 0..{len(names) - 1} for class_names")
        labels = [names[i] for i in y]
    else:
        labels = [str(v) for v in y.tolist()]
    return RawData(_resize_batch(x, image_size), labels, "image")
