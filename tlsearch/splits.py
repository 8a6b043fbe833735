"""A study's own splits written out as files: what ``tlsearch split STUDY --out DIR`` does.

A study that splits ``data.path`` itself (``validation_split``, ``test_split``) never shows which
examples landed where, so checking a number by hand meant copying the split code. Here the data is
read and split by :func:`tlsearch.data.load_dataset`, the very code a run uses, with the study's
seed, and each split made is written in the form of the data it came from:

* image folders: ``DIR/<split>/<class folder>/<file>``, symbolic links to the original files by
  default (nothing is duplicated, and a link names the file it stands for), copies with
  ``copy=True`` (to move the folder to another machine);
* ``.npz`` arrays: ``DIR/<split>.npz`` with the original rows of every per-example array (the
  pixels as stored, not as resized for training), ``class_names`` kept;
* tables (CSV, Parquet, JSON Lines): ``DIR/<split>.csv`` with the study's text and label columns.

``DIR/split.json`` records the study, the seed and shares, the counts per class and how files were
written. Everything is written in a folder beside ``DIR`` and renamed into place at the end, so a
failure leaves nothing behind; an existing ``DIR`` is replaced only when asked (``force``).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlsearch.config import StudyConfig
from tlsearch.data import Dataset, infer_format, load_dataset
from tlsearch.errors import UserError

__all__ = ["Written", "made_splits", "check_out", "write_splits"]


@dataclass(frozen=True)
class Written:
    """One split written: its name, where, and how many examples."""

    split: str
    path: Path
    n: int


def made_splits(cfg: StudyConfig) -> list[str]:
    """The splits the study cuts out of ``data.path`` itself, in the order they are cut: the
    validation split unless validation data is given, the test split with ``test_split``."""
    data = cfg.data
    out = ["test"] if data.test_split is not None else []
    if data.validation is None and data.target_validation is None:
        out.append("validation")
    return out


def check_out(out: Path, force: bool) -> None:
    """Refuse, before any data is read, an output that exists (unless ``force``) or is a file."""
    if out.exists() and not force:
        raise UserError(f"`--out`: {str(out)!r} exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise UserError(f"`--out`: {str(out)!r} is a file, not a folder")


def _arrays(ds: Dataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    if split == "validation":
        return ds.x_val, ds.y_val
    assert ds.x_test is not None and ds.y_test is not None
    return ds.x_test, ds.y_test


def _image_files(sources: list[str], root: Path, dest: Path, copy: bool) -> None:
    for src in sources:
        rel = Path(src).relative_to(root)  # <class folder>/<file>, sub-folders kept
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if copy:
            shutil.copy2(src, target)
        else:
            os.symlink(os.path.abspath(src), target)


def _npz_rows(path: Path, rows: list[int], dest: Path) -> None:
    with np.load(path, allow_pickle=False) as z:
        n = len(z["x"] if "x" in z.files else z["x_train"])
        arrays = {k: (z[k][rows] if z[k].ndim and len(z[k]) == n and k != "class_names"
                      else z[k]) for k in z.files}
    np.savez_compressed(dest, **arrays)


def _table(cfg: StudyConfig, x: np.ndarray, y: np.ndarray, classes: list[str], dest: Path) -> None:
    import pandas as pd

    frame = pd.DataFrame({cfg.data.text_column: list(x),
                          cfg.data.label_column: [classes[i] for i in y]})
    frame.to_csv(dest, index=False)


def write_splits(cfg: StudyConfig, out: Path, *, copy: bool = False,
                 force: bool = False) -> tuple[list[Written], Dataset]:
    """Read and split the study's data as a run does, and write each split it makes to ``out``.
    Raises :class:`~tlsearch.errors.UserError` when the study makes no split (its validation
    data is given as files, and no ``test_split``), or for bad data, before writing anything."""
    check_out(out, force)
    splits = made_splits(cfg)
    if not splits:
        given = cfg.data.target_validation or cfg.data.validation
        assert given is not None  # made_splits makes a validation split otherwise
        raise UserError(f"`data.validation`: study {cfg.name!r} splits nothing off `data.path`: "
                        f"its validation data is {str(cfg.resolve(given))!r} (given as files) "
                        f"and it has no `data.test_split`; there is nothing to write")
    data_path = cfg.resolve(cfg.data.path)
    ds = load_dataset(cfg.data, base_dir=cfg.base_dir, image_size=cfg.data.image_size,
                      seed=cfg.seed)
    fmt = cfg.data.format or infer_format(data_path)
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    written: list[Written] = []
    try:
        for split in splits:
            x, y = _arrays(ds, split)
            sources = ds.sources.get(split, [])
            if fmt == "image_folder":
                _image_files(sources, data_path, staging / split, copy)
                name = split
            elif fmt == "npz":
                name = f"{split}.npz"
                _npz_rows(data_path, [int(s) for s in sources], staging / name)
            else:
                name = f"{split}.csv"
                _table(cfg, x, y, ds.class_names, staging / name)
            written.append(Written(split, out / name, len(y)))
        counts = {w.split: dict(zip(ds.class_names, np.bincount(
            _arrays(ds, w.split)[1], minlength=ds.n_classes).tolist())) for w in written}
        record = {
            "study": cfg.name, "data": str(data_path), "format": fmt, "seed": cfg.seed,
            "validation_split": cfg.data.validation_split if "validation" in splits else None,
            "test_split": cfg.data.test_split,
            "files": ("copies" if copy else "symlinks") if fmt == "image_folder" else "rows",
            "splits": {w.split: {"path": w.path.name, "n": w.n, "class_counts": counts[w.split]}
                       for w in written},
            "training_examples": len(ds.y_train), "fingerprint": ds.fingerprint,
        }
        (staging / "split.json").write_text(json.dumps(record, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written, ds
