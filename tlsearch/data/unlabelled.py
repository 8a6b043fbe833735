"""Unlabelled data: the target domain of domain adaptation (``data.target``).

The same formats as labelled data, without the labels: a folder of images (searched recursively,
no class folders needed), a ``.npz`` with an array ``x``, or a CSV/Parquet/JSON Lines table with
the study's ``data.text_column``. Every example is read and checked before the first trial, like
the labelled data; a bad file is named.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlsearch.data.formats import fingerprint, format_file_list, infer_format
from tlsearch.errors import DataError

__all__ = ["load_unlabelled", "MIN_TARGET"]

#: fewer target examples than this cannot train a domain classifier and hold some out to judge it
MIN_TARGET = 8


def _images(cfg, path: Path, image_size: int, field: str, notes: list[str]) -> np.ndarray:
    from tlsearch.data.images import IMAGE_SUFFIXES, decode_images

    files = sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith(".")
                   and f.suffix.lower() in IMAGE_SUFFIXES)
    folders = sorted({f.relative_to(path).parts[0] for f in files if f.parent != path})
    if folders:
        # a labelled tree given as target data: read as one unlabelled pool, and said so (its
        # labels were ignored without a word); labelled target data is data.target_validation
        shown = ", ".join(folders[:5]) + (f" and {len(folders) - 5} more" if len(folders) > 5 else "")
        notes.append(f"the images of its {len(folders)} sub-folders ({shown}) read as one "
                     f"unlabelled pool: folder names are not used as labels (labelled target "
                     f"data goes in `data.target_validation`)")
    if not files:
        raise DataError(f"`{field}`: {str(path)!r} holds no image files (expected one of "
                        f"{', '.join(IMAGE_SUFFIXES)}, in the folder or below it)")
    arrays, bad = decode_images(files, image_size)
    if bad and not cfg.skip_bad_files:
        raise DataError(f"`{field}`: {len(bad)} of {len(files)} files under {str(path)!r} cannot be "
                        f"used:\n" + format_file_list(bad)
                        + "\n  Remove or fix them, or set `data.skip_bad_files: true`.")
    return np.stack([a for a in arrays if a is not None])


def _npz(cfg, path: Path, image_size: int, field: str) -> np.ndarray:
    from tlsearch.data.images import npz_pixels

    try:
        with np.load(path, allow_pickle=False) as z:
            key = "x" if "x" in z.files else "x_train" if "x_train" in z.files else None
            if key is None:
                raise DataError(f"`{field}`: {str(path)!r}: expected an array `x`, found "
                                f"{sorted(z.files)}")
            x = z[key]
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"`{field}`: {str(path)!r}: not a readable .npz file ({e})") from None
    return npz_pixels(x, key, f"`{field}`: {str(path)!r}", getattr(cfg, "pixel_range", None),
                      image_size)


def _table(cfg, path: Path, fmt: str, field: str) -> np.ndarray:
    from tlsearch.data import text

    read = {"csv": text._read_csv, "parquet": text._read_parquet, "jsonl": text._read_jsonl}[fmt]
    df = read(path)
    col = cfg.text_column
    if col not in [str(c) for c in df.columns]:
        raise DataError(f"`{field}`: {str(path)!r}: no column {col!r} (`data.text_column`); the "
                        f"file has columns {[str(c) for c in df.columns]}")
    texts = df[col].tolist()
    bad = [f"row {i + 1}: empty text in column {col!r}" for i, t in enumerate(texts)
           if not isinstance(t, str) or not t.strip()]
    if bad:
        raise DataError(f"`{field}`: {len(bad)} of {len(texts)} rows of {str(path)!r} cannot be "
                        f"used:\n" + format_file_list(bad))
    x = np.empty(len(texts), dtype=object)
    x[:] = texts
    return x


def load_unlabelled(cfg, path: Path | str, *, base_dir: Path, image_size: int,
                    field: str = "data.target", notes: list[str] | None = None
                    ) -> tuple[np.ndarray, str]:
    """(inputs, fingerprint) of unlabelled data in the format of ``data.path``. ``notes``
    receives one line saying what was read (the count, and how sub-folders were read)."""
    notes = [] if notes is None else notes
    said: list[str] = []
    path = Path(path)
    if not path.is_absolute():
        path = base_dir / path
    if not path.exists():
        raise DataError(f"`{field}`: {str(path)!r} does not exist")
    try:
        fmt = infer_format(path) if path.is_dir() or not cfg.format else cfg.format
    except DataError:
        raise DataError(f"`{field}`: cannot tell the format of {str(path)!r}: expected a folder of "
                        f"images, a .npz file or a .csv/.parquet/.jsonl table") from None
    if fmt == "image_folder":
        x = _images(cfg, path, image_size, field, said)
    elif fmt == "npz":
        x = _npz(cfg, path, image_size, field)
    else:
        x = _table(cfg, path, fmt, field)
    if len(x) < MIN_TARGET:
        raise DataError(f"`{field}`: {len(x)} examples in {str(path)!r}; domain adaptation needs at "
                        f"least {MIN_TARGET}")
    kind = "texts" if x.dtype == object else "images"
    notes.append(f"{len(x)} unlabelled target {kind} (`{field}`)"
                 + (f": {said[0]}" if said else ""))
    return x, fingerprint(x, names=["target"])
