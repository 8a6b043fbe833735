"""Datasets: reading any registered data format, and the split every format shares.

A format is a function ``load(cfg, path, image_size) -> RawData`` registered under a name with the
file suffixes it claims (:mod:`tlsearch.data.formats`, the registry; the built-in formats register
when this package imports them below). Everything is read, checked and split *before* the first
trial: a corrupt file is reported at start, naming it, never in the middle of a trial.

Labels are text. They are normalised to Unicode NFC, so "café" typed on one system and "café"
(e + combining accent) from a folder made on another are one class; a label that is missing,
however it is spelled (see :data:`MISSING_LABELS`), is refused with its row, never made a class.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlsearch.data.formats import (FORMATS, MISSING_LABEL_NOTE, MISSING_LABELS, RawData,
                                   fingerprint, format_file_list, formats, infer_format,
                                   is_missing_label, register_format)
from tlsearch.errors import DataError

# Importing the built-in formats registers them.
from tlsearch.data import images, text  # noqa: E402, F401

__all__ = ["Dataset", "RawData", "register_format", "formats", "load_dataset", "load_labelled",
           "format_file_list", "MISSING_LABELS", "MISSING_LABEL_NOTE", "is_missing_label",
           "infer_format", "fingerprint"]


def nfc(label: str) -> str:
    return unicodedata.normalize("NFC", label)


@dataclass
class Dataset:
    """Train and validation examples, integer labels indexing ``class_names`` (a stable order)."""

    modality: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    class_names: list[str]
    skipped: list[str] = field(default_factory=list)
    fingerprint: str = ""
    #: the held-out test examples (``data.test``): never used for selection, not in the fingerprint
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    #: unlabelled target-domain inputs (``data.target``) and their fingerprint; when
    #: ``data.target_validation`` is given, ``x_val``/``y_val`` are that labelled target data
    x_target: np.ndarray | None = None
    target_fingerprint: str = ""
    target_validation: bool = False
    #: what reading the data noticed that the user should hear (one line each), e.g. test
    #: examples that are also training examples
    warnings: list[str] = field(default_factory=list)
    #: how the target data was read (a count, and class folders whose names were not used)
    target_note: str = ""
    #: per split made here ("train", "validation", "test"): where each example came from, in
    #: the order of its arrays (see :attr:`RawData.sources`); what ``tlsearch split`` writes out
    sources: dict[str, list[str]] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def classes_missing_from_validation(self) -> list[str]:
        counts = np.bincount(self.y_val, minlength=self.n_classes)
        return [c for c, n in zip(self.class_names, counts) if n == 0]

    def objective_warnings(self, objective: str) -> list[str]:
        """One-line warnings about measuring ``objective`` on this validation set.

        A split made here always holds every class; an explicit ``data.validation`` may not, and
        then ``val_auc`` is computed without a single positive example of those classes, which
        says nothing about how well they are recognised.
        """
        missing = self.classes_missing_from_validation()
        if objective != "val_auc" or not missing:
            return []
        return [f"warning: the validation data has no examples of classes {missing}, so "
                f"`val_auc` cannot measure them; add some to `data.validation` or choose "
                f"another `objective`"]

    def summary(self) -> str:
        counts = np.bincount(self.y_train, minlength=self.n_classes)
        line = (f"{len(self.y_train)} training and {len(self.y_val)} validation {self.modality}s, "
                f"{self.n_classes} classes (smallest has {counts.min()} training examples)")
        if self.y_test is not None:
            line += f"; {len(self.y_test)} held-out test {self.modality}s"
        if self.x_target is not None:
            line += f"; {self.target_note or f'{len(self.x_target)} unlabelled target examples'}"
        return line


def load_dataset(cfg, *, base_dir: Path, image_size: int, seed: int) -> Dataset:
    """Read, check and split the data described by a :class:`~tlsearch.config.DataConfig`."""
    path = cfg.path if Path(cfg.path).is_absolute() else base_dir / cfg.path
    if not path.exists():
        raise DataError(f"`data.path`: {str(path)!r} does not exist")
    fmt = cfg.format or infer_format(path)
    if fmt not in FORMATS:
        raise DataError(f"`data.format`: unknown format {fmt!r}; expected one of {formats()}")
    _check_pixel_range(getattr(cfg, "pixel_range", None), fmt)
    reader = FORMATS[fmt].load
    train = reader(cfg, path, image_size)
    train.labels = [nfc(c) for c in train.labels]
    skipped = list(train.skipped)
    target_val = getattr(cfg, "target_validation", None)
    validation, vfield = (target_val, "data.target_validation") if target_val is not None \
        else (cfg.validation, "data.validation")
    class_names = sorted(set(train.labels), key=_label_key)
    index = {c: i for i, c in enumerate(class_names)}
    y = np.array([index[c] for c in train.labels], dtype=np.int64)
    rows = np.arange(len(y))
    test_rows = None
    test_split = getattr(cfg, "test_split", None)
    if test_split is not None:  # held out first, so the validation split never sees it
        _check_classes(class_names, y, "data.path")
        rows, test_rows = _stratified_split(rows, y, class_names, test_split,
                                            ("data.test_split", "data.test"), seed)
    if validation is not None:
        vpath = validation if Path(validation).is_absolute() else base_dir / validation
        if not vpath.exists():
            raise DataError(f"`{vfield}`: {str(vpath)!r} does not exist")
        val = reader(cfg, vpath, image_size)
        val.labels = [nfc(c) for c in val.labels]
        skipped += val.skipped
        unknown = sorted(set(val.labels) - set(class_names))
        if unknown:
            raise DataError(f"`{vfield}`: labels {unknown} occur in the validation data "
                            f"but not in the training data {class_names}"
                            + _lookalikes(unknown, class_names))
        tr = rows
        x_tr, y_tr = (train.x, y) if test_rows is None else (train.x[tr], y[tr])
        x_va, y_va = val.x, np.array([index[c] for c in val.labels], dtype=np.int64)
        _check_classes(class_names, y_tr, "data.path")
        if len(y_va) == 0:
            raise DataError(f"`{vfield}`: no examples found")
        sources = {"validation": list(val.sources)} if val.sources else {}
    else:
        _check_classes(class_names, y, "data.path")
        tr, va = _stratified_split(rows, y, class_names, cfg.validation_split,
                                   ("data.validation_split", "data.validation"), seed)
        x_tr, y_tr, x_va, y_va = train.x[tr], y[tr], train.x[va], y[va]
        sources = {"validation": [train.sources[i] for i in va]} if train.sources else {}
    if train.sources:
        sources["train"] = [train.sources[i] for i in tr]
        if test_rows is not None:
            sources["test"] = [train.sources[i] for i in test_rows]
    ds = Dataset(train.modality, x_tr, y_tr, x_va, y_va, class_names, skipped, sources=sources)
    ds.fingerprint = fingerprint(x_tr, y_tr, x_va, y_va, names=class_names)
    if test_rows is not None:
        ds.x_test, ds.y_test = train.x[test_rows], y[test_rows]
        ds.warnings += _test_overlap(ds)
    if getattr(cfg, "test", None) is not None:
        ds.x_test, ds.y_test, test_skipped = load_labelled(
            cfg, cfg.test, class_names, base_dir=base_dir, image_size=image_size, field="data.test")
        ds.skipped += test_skipped
        ds.warnings += _test_overlap(ds)
    if getattr(cfg, "target", None) is not None:
        from tlsearch.data.unlabelled import load_unlabelled

        notes: list[str] = []
        ds.x_target, ds.target_fingerprint = load_unlabelled(cfg, cfg.target, base_dir=base_dir,
                                                             image_size=image_size, notes=notes)
        ds.target_note = "; ".join(notes)
        ds.target_validation = target_val is not None
        if ds.x_target.dtype != ds.x_train.dtype and (ds.x_target.dtype == object) != (
                ds.x_train.dtype == object):
            raise DataError("`data.target`: the target data is not of the kind of `data.path` "
                            "(images and texts mixed)")
    return ds


def _stratified_split(rows: np.ndarray, y: np.ndarray, class_names: list[str], share: float,
                      fields: tuple[str, str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` of ``data.path`` split into (kept, split off): ``share`` of all its examples,
    stratified by label and seeded, so every run of a study (and ``tlsearch split``) splits the
    same way. ``fields``: the share's field and its alternative, named when there are too few
    examples."""
    from sklearn.model_selection import train_test_split

    labels = y[rows]
    n_classes = len(class_names)
    counts = np.bincount(labels, minlength=n_classes)
    n_part = int(round(len(y) * share))
    if counts.min() < 2 or n_part < n_classes or len(rows) - n_part < n_classes:
        small = [class_names[i] for i in np.flatnonzero(counts < 2)]
        raise DataError(
            f"`data.path`: too few examples for a stratified {share:g} split: "
            f"{len(rows)} examples in {n_classes} classes"
            + (f"; classes with fewer than 2: {small}" if small else "")
            + f". Add data, change `{fields[0]}`, or give `{fields[1]}`"
        )
    kept, part = train_test_split(rows, test_size=n_part, stratify=labels, random_state=seed)
    return kept, part


def _digests(x: np.ndarray) -> list[bytes]:
    """One digest per example, of its content as the model sees it (decoded, resized pixels, or
    the text): the same image under two names is the same example."""
    if x.dtype == object or x.dtype.kind in "US":
        return [hashlib.blake2b(str(v).encode(), digest_size=16).digest() for v in x]
    return [hashlib.blake2b(np.ascontiguousarray(v).tobytes(), digest_size=16).digest() for v in x]


def _test_overlap(ds: Dataset) -> list[str]:
    """Refuse a ``data.test`` that holds only training or validation examples; warn, with the
    count, where some are shared. Figures on examples the model was trained or chosen on are
    not held-out figures."""
    assert ds.x_test is not None
    seen = set(_digests(ds.x_train)) | set(_digests(ds.x_val))
    shared = sum(d in seen for d in _digests(ds.x_test))
    n = len(ds.x_test)
    if shared and shared == n:
        raise DataError(f"`data.test`: all {n} of its examples are also in the training or "
                        f"validation data (overlap: the same content); a held-out test set must "
                        f"hold other examples")
    if shared:
        return [f"warning: `data.test`: {shared} of its {n} examples are also in the training or "
                f"validation data (overlap: the same content); their test figures are not "
                f"held out. Remove them from one of the two."]
    return []


def load_labelled(cfg, path: Path | str, class_names: list[str], *, base_dir: Path | None,
                  image_size: int, field: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Labelled examples in any registered format, labels mapped onto known ``class_names``
    (a held-out test set, or the data given to ``tlsearch evaluate``). Returns (x, y, skipped)."""
    path = Path(path)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.exists():
        raise DataError(f"`{field}`: {str(path)!r} does not exist")
    fmt = getattr(cfg, "format", None) or infer_format(path)
    raw = FORMATS[fmt].load(cfg, path, image_size)
    labels = [nfc(c) for c in raw.labels]
    unknown = sorted(set(labels) - set(class_names))
    if unknown:
        raise DataError(f"`{field}`: labels {unknown} are not among the model's classes "
                        f"{class_names}" + _lookalikes(unknown, class_names))
    if not labels:
        raise DataError(f"`{field}`: no examples found in {str(path)!r}")
    index = {c: i for i, c in enumerate(class_names)}
    return raw.x, np.array([index[c] for c in labels], dtype=np.int64), list(raw.skipped)


_INTEGER = re.compile(r"-?[0-9]+")


def _label_key(label: str):
    """Integer labels sort as numbers (2 before 10), others as text.

    Only ASCII digits make a number: ``str.isdigit`` also accepts "²", which ``int`` refuses.
    """
    return (0, int(label), "") if _INTEGER.fullmatch(label) else (1, 0, label)


def _loose(label: str) -> str:
    """A label with the differences people do not see removed: compatibility forms ("ﬁ" and
    "fi"), case, invisible format characters and surrounding spaces."""
    folded = unicodedata.normalize("NFKC", label).casefold()
    return "".join(ch for ch in folded if unicodedata.category(ch) != "Cf").strip()


def _code_points(label: str) -> str:
    return " ".join(f"U+{ord(ch):04X}" for ch in label)


def _lookalikes(unknown: list[str], class_names: list[str]) -> str:
    """For validation labels that look like a training class but are other text: both spelled out,
    code point by code point, since on screen they look the same."""
    lines = []
    for u in unknown:
        for c in class_names:
            if _loose(u) == _loose(c):
                lines.append(f"\n  {u!r} ({_code_points(u)}) looks like training class {c!r} "
                             f"({_code_points(c)}) but is other text; rename one of them")
    return "".join(lines)


def _check_pixel_range(pixel_range, fmt: str) -> None:
    if pixel_range is None:
        return
    if fmt != "npz":
        raise DataError(f"`data.pixel_range` applies to .npz arrays only, not to {fmt} data "
                        f"(image files carry their own bit depth)")
    low, high = (float(v) for v in pixel_range)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise DataError(f"`data.pixel_range`: expected [low, high] with low < high, got "
                        f"[{low:g}, {high:g}]")


def _check_classes(class_names: list[str], y: np.ndarray, field_name: str) -> None:
    if len(class_names) < 2:
        raise DataError(f"`{field_name}`: found a single class {class_names}; classification "
                        f"needs at least two")
