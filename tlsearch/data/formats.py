"""The data-format registry, and what every format reader shares: :class:`RawData` (what a reader
returns), the spellings of a missing label, the list of bad files an error shows, and the content
fingerprint of what was read.

A format is a function ``load(cfg, path, image_size) -> RawData`` registered with
:func:`register_format` under a name and the file suffixes it claims: in a module of this package
(imported by the package's ``__init__``; this module imports none of them), or in an installed
package that names its module in the ``tlsearch.data_formats`` entry-point group (see
:mod:`tlsearch._registry`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from tlsearch._registry import Registry
from tlsearch.errors import DataError

__all__ = ["RawData", "DataFormat", "FORMATS", "register_format", "formats", "infer_format",
           "format_file_list", "fingerprint", "MISSING_LABELS", "MISSING_LABEL_NOTE",
           "is_missing_label"]

F = TypeVar("F", bound=Callable[..., "RawData"])

#: Label values that mean "no label", compared after stripping spaces and ignoring case: the
#: spellings pandas reads as missing by default, as CSV, Parquet, JSON and NumPy files write them.
#: They are refused rather than made a class, so a class really named "NA" or "None" needs another
#: name: a silent class "nan" costs far more than a rename.
MISSING_LABELS = frozenset({
    "", "nan", "-nan", "na", "n/a", "#n/a", "#n/a n/a", "#na", "null", "none", "<na>", "nat",
    "1.#ind", "-1.#ind", "1.#qnan", "-1.#qnan",
})
MISSING_LABEL_NOTE = "empty, NaN, NA, N/A, None, null and the like, in any case"


def is_missing_label(v) -> bool:
    """Whether a label value read from a file stands for a missing label (see MISSING_LABELS)."""
    if v is None or type(v).__name__ in ("NAType", "NaTType"):  # pandas' missing markers
        return True
    if isinstance(v, (float, np.floating)):
        return math.isnan(v)
    if isinstance(v, (str, np.str_)):
        return v.strip().casefold() in MISSING_LABELS
    return False


@dataclass
class RawData:
    """What a format reader returns: inputs, string labels, and what it skipped."""

    x: np.ndarray
    labels: list[str]
    modality: str
    skipped: list[str] = field(default_factory=list)
    #: where each example came from, in the order of ``x``: its file (image folders) or its row
    #: in the file (arrays); empty where a reader does not say
    sources: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DataFormat:
    """A registered format: its reader, the file suffixes it claims, or that it reads folders."""

    name: str
    load: Callable[..., RawData]
    suffixes: tuple[str, ...]
    is_dir: bool = False


FORMATS: Registry[DataFormat] = Registry("data format", "tlsearch.data_formats")


def register_format(name: str, *, suffixes: tuple[str, ...] = (),
                    is_dir: bool = False) -> Callable[[F], F]:
    """Decorator: register ``load(data_cfg, path, image_size) -> RawData`` as format ``name``."""

    def deco(fn: F) -> F:
        FORMATS.register(name, DataFormat(name, fn, suffixes, is_dir))
        return fn

    return deco


def formats() -> list[str]:
    return FORMATS.names()


def infer_format(path: Path) -> str:
    """The format of a file by its suffix (registration order: built-ins first); a folder is the
    first folder format's."""
    if path.is_dir():
        return next(f.name for f in FORMATS.values() if f.is_dir)
    name = path.name.lower()
    for f in FORMATS.values():
        if any(name.endswith(s) for s in f.suffixes):
            return f.name
    known = sorted(s for f in FORMATS.values() for s in f.suffixes)
    raise DataError(f"`data.path`: cannot tell the format of {str(path)!r}: expected a folder of "
                    f"class folders or a file ending in one of {known}; or set `data.format`")


def format_file_list(files: list[str], limit: int = 15) -> str:
    shown = "\n".join(f"    {f}" for f in files[:limit])
    more = f"\n    ... and {len(files) - limit} more" if len(files) > limit else ""
    return shown + more


def fingerprint(*arrays, names: list[str]) -> str:
    """The content hash of arrays read from any format, and class names: it keys cached features
    (so it must not change for the same data)."""
    h = hashlib.sha256()
    for a in arrays:
        if a.dtype == object:
            for s in a:
                h.update(str(s).encode("utf-8") + b"\0")
        else:
            h.update(str((a.shape, a.dtype)).encode())
            h.update(np.ascontiguousarray(a).tobytes())
    h.update("\0".join(names).encode())
    return h.hexdigest()
