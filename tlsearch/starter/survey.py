"""What ``tlsearch init`` measures of the data before it chooses anything.

Two steps, so that images are decoded once, at the size the study will use: :func:`survey` looks
at the layout, the format and the image headers (sizes) or the table's columns, which is cheap;
:func:`read` then reads and checks every example with :func:`tlsearch.data.load_dataset`, exactly
as a run will, and counts the classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlsearch.config import DataConfig
from tlsearch.data import Dataset, infer_format, load_dataset
from tlsearch.errors import UserError

__all__ = ["DataSurvey", "survey", "read"]

#: folders beside ``train/`` that hold validation or test data, as data sets are often shipped
_VALIDATION_NAMES = ("val", "valid", "validation")
_TEXT_NAMES = ("text", "sentence", "review", "content", "document", "body", "comment")
_LABEL_NAMES = ("label", "labels", "class", "target", "category", "sentiment", "y")
#: image headers read to learn the sizes: enough for a median, cheap on any folder
_SIZE_SAMPLE = 200


@dataclass
class DataSurvey:
    """The data as ``tlsearch init`` found it. Counts are filled by :func:`read`."""

    given: Path  # what the user named
    path: Path  # the labelled pool the study splits: ``data.path``
    fmt: str
    modality: str  # "image" or "text"
    validation: Path | None = None  # given as files (``val/`` beside ``train/``)
    test: Path | None = None  # given as files (``test/`` beside ``train/``)
    text_column: str | None = None
    label_column: str | None = None
    #: median (width, height) of the images (a sample of their headers)
    image_sides: tuple[int, int] | None = None
    classes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # per class, in ``path``
    n_validation: int = 0  # examples in the given validation files
    n_test: int = 0
    #: (median, 95th percentile) of the number of words per text
    text_words: tuple[int, int] | None = None
    skipped: int = 0

    @property
    def n(self) -> int:
        """Examples in ``path``: what training and the study's own splits share."""
        return sum(self.counts.values())

    @property
    def imbalance(self) -> float:
        """The largest class's count over the smallest's (1.0: balanced)."""
        return max(self.counts.values()) / max(1, min(self.counts.values()))


def _has_class_folders(d: Path) -> bool:
    return any(c.is_dir() and not c.name.startswith(".") for c in d.iterdir())


def _layout(data: Path) -> tuple[Path, Path | None, Path | None]:
    """(the pool, validation files, test files): ``DATA/train`` with ``val/`` and ``test/``
    beside it where the data comes that way, else ``DATA`` itself."""
    if data.is_dir():
        subs = {d.name.lower(): d for d in data.iterdir() if d.is_dir()}
        train = subs.get("train")
        if train is not None and _has_class_folders(train):
            val = next((subs[n] for n in _VALIDATION_NAMES if n in subs), None)
            return train, val, subs.get("test")
    return data, None, None


def _image_sides(path: Path, fmt: str) -> tuple[int, int] | None:
    if fmt == "npz":
        with np.load(path, allow_pickle=False) as z:
            x = z["x"] if "x" in z.files else z["x_train"] if "x_train" in z.files else None
            return None if x is None or x.ndim < 3 else (int(x.shape[2]), int(x.shape[1]))
    from PIL import Image

    from tlsearch.data.images import IMAGE_SUFFIXES

    files = sorted(f for f in path.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        return None
    step = max(1, len(files) // _SIZE_SAMPLE)
    sides = []
    for f in files[::step][:_SIZE_SAMPLE]:
        try:
            with Image.open(f) as im:  # the header only: nothing decoded
                sides.append(im.size)
        except Exception:  # noqa: BLE001 - the full read reports unreadable files by name
            continue
    if not sides:
        return None
    w, h = np.median(np.array(sides), axis=0)
    return int(w), int(h)


def _columns(path: Path, fmt: str) -> list[str]:
    import pandas as pd

    if fmt == "csv":
        return [str(c) for c in pd.read_csv(path, dtype=str, nrows=5).columns]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return [str(c) for c in pq.read_schema(path).names]
    return [str(c) for c in pd.read_json(path, lines=True, nrows=5).columns]


def _pick(columns: list[str], names: tuple[str, ...], given: str | None, what: str,
          flag: str) -> str:
    if given is not None:
        if given not in columns:
            raise UserError(f"`{flag}`: no column {given!r}; the file has columns {columns}")
        return given
    lowered = {c.lower(): c for c in columns}
    found = next((lowered[n] for n in names if n in lowered), None)
    if found is None:
        raise UserError(f"cannot tell which column holds the {what}: the file has columns "
                        f"{columns}; name it with {flag}")
    return found


def survey(data: Path | str, *, text_column: str | None = None,
           label_column: str | None = None) -> DataSurvey:
    """The layout, format and modality of ``data``, and its image sizes or text columns."""
    given = Path(data)
    if not given.exists():
        raise UserError(f"`DATA`: {str(given)!r} does not exist")
    path, validation, test = _layout(given)
    fmt = infer_format(path)
    modality = "image" if fmt in ("image_folder", "npz") else "text"
    s = DataSurvey(given, path, fmt, modality, validation, test)
    if modality == "image":
        s.image_sides = _image_sides(path, fmt)
    else:
        columns = _columns(path, fmt)
        s.text_column = _pick(columns, _TEXT_NAMES, text_column, "texts", "--text-column")
        s.label_column = _pick(columns, _LABEL_NAMES, label_column, "labels", "--label-column")
    return s


def _words(x: np.ndarray) -> list[int]:
    return [len(str(t).split()) for t in x]


def read(s: DataSurvey, image_size: int) -> Dataset:
    """Read and check every example, as a run will (a file that would stop the run stops this,
    by name), and fill in the counts. Returns the data, split as the cost estimate wants it."""
    cfg = DataConfig(path=s.path, validation=s.validation, test=s.test, image_size=image_size,
                     text_column=s.text_column or "text", label_column=s.label_column or "label")
    ds = load_dataset(cfg, base_dir=Path("."), image_size=image_size, seed=0)
    s.classes = list(ds.class_names)
    pool = [ds.y_train] if s.validation is not None else [ds.y_train, ds.y_val]
    counts = np.bincount(np.concatenate(pool), minlength=ds.n_classes)
    s.counts = dict(zip(ds.class_names, counts.tolist()))
    s.n_validation = len(ds.y_val) if s.validation is not None else 0
    s.n_test = 0 if ds.y_test is None else len(ds.y_test)
    s.skipped = len(ds.skipped)
    if s.modality == "text":
        words = _words(ds.x_train) + _words(ds.x_val)
        s.text_words = int(np.median(words)), int(np.percentile(words, 95))
    return ds
